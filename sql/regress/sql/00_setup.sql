-- The extension installs into schema sync; later files assume it is there.
CREATE EXTENSION syncbridge;
SELECT extname, extnamespace::regnamespace AS schema, extrelocatable
  FROM pg_extension WHERE extname = 'syncbridge';
SELECT sync.version() ~ '^\d+\.\d+\.\d+$' AS version_is_semver;
