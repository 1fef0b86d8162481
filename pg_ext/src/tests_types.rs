//! `#[pg_test]`s of the JSON serialization and hashing of every column type
//! syncbridge documents (see sql/compile.sql and the README).

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// A table with one column of the given type, a graph target and a
    /// definition sending that column as field `v`.
    fn setup(name: &str, typ: &str) {
        Spi::run(&format!(
            "CREATE TABLE IF NOT EXISTS public.t_{name} (id int PRIMARY KEY, v {typ});
             SELECT sync.create_target('tgt_{name}', kind => 'graph',
                    config => '{{\"tenant_id\": \"t\", \"client_id\": \"c\", \"site_id\": \"s\"}}');
             SELECT sync.define('def_{name}', source => 'public.t_{name}', target => 'tgt_{name}', list => 'L');
             SELECT sync.map('def_{name}', 'v', 'V');"
        ))
        .expect("setup");
    }

    /// The JSON sent for a value given as a SQL literal.
    fn sent(name: &str, literal: &str) -> String {
        Spi::run(&format!("DELETE FROM public.t_{name}; INSERT INTO public.t_{name} VALUES (1, {literal})"))
            .expect("insert");
        Spi::get_one::<String>(&format!("SELECT (fields -> 'V')::text FROM sync.preview('def_{name}')"))
            .expect("spi")
            .expect("a row")
    }

    fn hash(name: &str) -> String {
        Spi::get_one::<String>(&format!("SELECT hash FROM sync.preview('def_{name}')")).expect("spi").expect("a row")
    }

    #[pg_test]
    fn timestamptz_is_utc_iso8601_with_z_in_whole_seconds() {
        setup("tstz", "timestamptz");
        assert_eq!(sent("tstz", "'2024-02-29 23:30:00-05'"), r#""2024-03-01T04:30:00Z""#);
        let whole = hash("tstz");
        // SharePoint keeps whole seconds: the fraction is dropped, and the
        // hash is taken over what the target holds.
        assert_eq!(sent("tstz", "'2024-03-01 04:30:00.75+00'"), r#""2024-03-01T04:30:00Z""#);
        assert_eq!(hash("tstz"), whole);
        assert_eq!(sent("tstz", "'infinity'"), r#""infinity""#);
        // The session's time zone and date style change nothing.
        Spi::run("SET LOCAL TimeZone = 'Asia/Kolkata'; SET LOCAL DateStyle = 'German, DMY'").expect("set");
        assert_eq!(sent("tstz", "'2024-03-01 10:00:00+05:30'"), r#""2024-03-01T04:30:00Z""#);
        assert_eq!(hash("tstz"), whole);
    }

    #[pg_test]
    fn timestamp_and_date_in_the_sites_time_zone() {
        setup("ts", "timestamp");
        setup("d", "date");
        // The default time zone is UTC.
        assert_eq!(sent("ts", "'2024-02-29 23:30:00.5'"), r#""2024-02-29T23:30:00Z""#);
        assert_eq!(sent("d", "'2024-02-29'"), r#""2024-02-29T00:00:00Z""#);
        assert_eq!(sent("d", "'-infinity'"), r#""-infinity""#);
        // A site in New York: a timestamp is its wall-clock time there, a
        // date its midnight there (EST before 2024-03-10, EDT after).
        for t in ["tgt_ts", "tgt_d"] {
            Spi::run(&format!("SELECT sync.alter_target('{t}', config => '{{\"time_zone\": \"America/New_York\"}}')"))
                .expect("alter");
        }
        assert_eq!(sent("ts", "'2024-02-29 23:30:00'"), r#""2024-03-01T04:30:00Z""#);
        assert_eq!(sent("ts", "'2024-03-10 12:00:00.999'"), r#""2024-03-10T16:00:00Z""#);
        assert_eq!(sent("d", "'2024-03-09'"), r#""2024-03-09T05:00:00Z""#);
        assert_eq!(sent("d", "'2024-03-11'"), r#""2024-03-11T04:00:00Z""#);
        Spi::run("SET LOCAL DateStyle = 'SQL, DMY'; SET LOCAL TimeZone = 'Asia/Tokyo'").expect("set");
        assert_eq!(sent("d", "'2024-03-11'"), r#""2024-03-11T04:00:00Z""#);
    }

    #[pg_test(error = "invalid value for configuration key time_zone")]
    fn an_unknown_time_zone_is_refused() {
        setup("tzbad", "date");
        Spi::run("SELECT sync.alter_target('tgt_tzbad', config => '{\"time_zone\": \"Mars/Olympus_Mons\"}')")
            .expect("refused");
    }

    #[pg_test]
    fn numbers_keep_every_digit() {
        // numeric without a precision (or more than 15 digits): a note
        // holding its exact text.
        setup("num", "numeric");
        assert_eq!(sent("num", "1234.5"), r#""1234.5""#);
        assert_eq!(sent("num", "5000.50"), r#""5000.50""#);
        assert_eq!(sent("num", "12345678901234567890.123456789"), r#""12345678901234567890.123456789""#);
        assert_eq!(sent("num", "'NaN'"), r#""NaN""#);
        // numeric(p <= 15): a number.
        setup("num12", "numeric(12, 2)");
        assert_eq!(sent("num12", "5000.50"), "5000.50");
        assert_eq!(sent("num12", "-0.01"), "-0.01");
        // bigint: always a number (the worker refuses one beyond 2^53 and
        // plan() warns, rather than let a double round it).
        setup("i8", "bigint");
        assert_eq!(sent("i8", "9007199254740991"), "9007199254740991");
        assert_eq!(sent("i8", "9007199254740993"), "9007199254740993");
        setup("f8", "double precision");
        assert_eq!(sent("f8", "0.1"), "0.1");
        assert_eq!(sent("f8", "'Infinity'"), r#""Infinity""#);
        Spi::run("SET LOCAL extra_float_digits = -15").expect("set");
        assert_eq!(sent("f8", "0.1"), "0.1");
        assert_eq!(sent("f8", "1.0000000000000002"), "1.0000000000000002");
    }

    #[pg_test]
    fn uuid_bool_and_unicode_text() {
        setup("u", "uuid");
        assert_eq!(sent("u", "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'"), r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#);
        setup("b", "boolean");
        assert_eq!(sent("b", "true"), "true");
        assert_eq!(sent("b", "false"), "false");
        setup("txt", "text");
        assert_eq!(sent("txt", "'Chloé Ngô 東京 🚀'"), r#""Chloé Ngô 東京 🚀""#);
        assert_eq!(
            sent("txt", r#"E'quote " backslash \\ newline \n tab \t'"#),
            r#""quote \" backslash \\ newline \n tab \t""#
        );
        setup("vc", "varchar(10)");
        assert_eq!(sent("vc", "'ab'"), r#""ab""#);
    }

    /// Arrays and JSON go to multi-line text columns, which take strings
    /// only: a JSON scalar as its text, a document or an array as JSON text.
    #[pg_test]
    fn arrays_and_json_are_text() {
        setup("arr", "int[]");
        assert_eq!(sent("arr", "'{1,2,NULL}'"), r#""[1, 2, null]""#);
        setup("tarr", "text[]");
        assert_eq!(sent("tarr", "ARRAY['a', 'é', NULL]"), r#""[\"a\", \"é\", null]""#);
        setup("jb", "jsonb");
        assert_eq!(
            sent("jb", r#"'{"b": [1, {"c": null}], "a": "x"}'"#),
            r#""{\"a\": \"x\", \"b\": [1, {\"c\": null}]}""#
        );
        assert_eq!(sent("jb", "'42'"), r#""42""#);
        assert_eq!(sent("jb", "'true'"), r#""true""#);
        assert_eq!(sent("jb", r#"'"s"'"#), r#""s""#);
        assert_eq!(sent("jb", "'null'"), "null");
        setup("js", "json");
        assert_eq!(sent("js", r#"'{"k": 1}'"#), r#""{\"k\": 1}""#);
        assert_eq!(sent("js", "'1.50'"), r#""1.50""#);
    }

    #[pg_test]
    fn bytea_and_domains() {
        setup("by", "bytea");
        assert_eq!(sent("by", r"'\x00ff10'"), r#""AP8Q""#);
        // A domain's own type modifier decides: numeric(20, 2) is text with
        // every digit, numeric(10, 2) a number.
        Spi::run("CREATE DOMAIN public.money_d AS numeric(20, 2)").expect("domain");
        setup("dom", "public.money_d");
        assert_eq!(sent("dom", "12.50"), r#""12.50""#);
        Spi::run("CREATE DOMAIN public.price_d AS numeric(10, 2)").expect("domain");
        setup("dom2", "public.price_d");
        assert_eq!(sent("dom2", "12.50"), "12.50");
    }

    #[pg_test]
    fn hash_is_sha256_of_the_canonical_fields() {
        setup("h", "text");
        sent("h", "'x'");
        let h = hash("h");
        let expect = Spi::get_one::<String>(r#"SELECT encode(sha256(convert_to('{"V": "x"}', 'UTF8')), 'hex')"#)
            .expect("spi")
            .expect("value");
        assert_eq!(h, expect);
        sent("h", "'y'");
        assert_ne!(hash("h"), h, "a changed value changes the hash");
        sent("h", "'x'");
        assert_eq!(hash("h"), h, "the same value hashes the same");
        // NULL and the text 'null' are different values.
        sent("h", "NULL");
        let hn = hash("h");
        sent("h", "'null'");
        assert_ne!(hash("h"), hn);
    }

    /// NULL is sent as JSON null: the field is cleared on the target.
    #[pg_test]
    fn null_of_every_type_is_json_null() {
        for (name, typ) in [("n1", "timestamptz"), ("n2", "numeric"), ("n3", "int[]"), ("n4", "jsonb"), ("n5", "uuid")]
        {
            setup(name, typ);
            assert_eq!(sent(name, "NULL"), "null", "{typ}");
        }
    }
}
