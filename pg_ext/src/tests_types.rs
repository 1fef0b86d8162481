//! #[pg_test]s of type serialization and hashing.
