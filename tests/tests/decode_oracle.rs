//! Issue 4: the pgoutput decoder against PostgreSQL's own `test_decoding`.
//! Two slots (test_decoding and pgoutput) see the same transactions over
//! columns of many types: TOASTed text (changed and unchanged), NULLs,
//! quotes and unicode, key changes, REPLICA IDENTITY DEFAULT and FULL,
//! rolled-back subtransactions, TRUNCATE, logical messages. The pgoutput
//! bytes, decoded by syncbridge and printed the way test_decoding prints,
//! must equal test_decoding's lines one for one.

use std::collections::HashMap;

use syncbridge_tests::cluster;
use syncbridge_worker::source::pgoutput::{self, Column, Message, RelationColumn, TupleData};

const DDL: &str = r#"
CREATE TABLE t_default (
    id int PRIMARY KEY, i2 smallint, i8 bigint, n numeric(12,3), f4 real, f8 double precision,
    b boolean, t text, vc varchar(20), ch char(3), bt bytea, d date, ts timestamp, tstz timestamptz,
    iv interval, u uuid, j json, jb jsonb, arr int[], tarr text[], bits bit(4), vb varbit, ip inet,
    "Odd Name" text, big text);
ALTER TABLE t_default ALTER big SET STORAGE EXTERNAL;
CREATE TABLE t_full (k text, v int, note text);
ALTER TABLE t_full REPLICA IDENTITY FULL;
CREATE TABLE t_compound (a int, b text, c int, PRIMARY KEY (a, b));
CREATE PUBLICATION oracle_pub FOR ALL TABLES;
"#;

const WORKLOAD: &[&str] = &[
    // Every type, NULLs, quotes, unicode, and a TOASTed (out-of-line) text.
    r#"INSERT INTO t_default VALUES
        (1, 2, 9000000000, 12345.678, 1.5, 2.25, true, 'it''s', 'ünïcödé ✓', 'ab', '\x00ff10', '2024-02-29',
         '2024-02-29 12:34:56.789', '2024-02-29 12:34:56+02', '1 day 02:03:04', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
         '{"a": [1, 2]}', '{"b": {"c": null}}', '{1,2,NULL}', '{"x y","z\"q"}', B'1010', B'101', '10.0.0.1/8',
         'odd', repeat('toast me ', 5000)),
        (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL),
        (3, -1, -2, -0.5, 'NaN', '-Infinity', false, E'line\nbreak\ttab \\ backslash', '', '   ', '\x', '1999-12-31',
         '-infinity', 'infinity', '-1 mon', '00000000-0000-0000-0000-000000000000', '[]', '{}', '{}', '{}', B'0000',
         B'', '::1', '', 'short')"#,
    // An update that leaves the TOASTed column alone (unchanged-toast-datum).
    "UPDATE t_default SET i2 = 3 WHERE id = 1",
    // An update of the TOASTed column itself.
    "UPDATE t_default SET big = repeat('changed ', 4000) WHERE id = 1",
    // A key change (old key sent under REPLICA IDENTITY DEFAULT).
    "UPDATE t_default SET id = 100 WHERE id = 2",
    "DELETE FROM t_default WHERE id = 3",
    // REPLICA IDENTITY FULL: the whole old row on update and delete.
    "INSERT INTO t_full VALUES ('k1', 1, NULL), ('k2', 2, 'two'), ('k3', 3, repeat('x', 3000))",
    "UPDATE t_full SET v = v + 10 WHERE k IN ('k1', 'k3')",
    "DELETE FROM t_full WHERE k = 'k2'",
    // Several statements in one transaction; a rolled-back subtransaction.
    "BEGIN; INSERT INTO t_compound VALUES (1, 'a', 1), (1, 'b', 2); SAVEPOINT s;
       INSERT INTO t_compound VALUES (9, 'gone', 9); ROLLBACK TO s;
       UPDATE t_compound SET b = 'c' WHERE a = 1 AND b = 'b'; DELETE FROM t_compound WHERE b = 'a'; COMMIT;",
    // A transaction that rolls back entirely appears in neither.
    "BEGIN; INSERT INTO t_compound VALUES (7, 'never', 7); ROLLBACK;",
    // Logical messages, transactional and not. (The transactional one comes
    // after a change: with skip-empty-xacts, test_decoding prints a message
    // that opens a transaction before its BEGIN line, pgoutput after.)
    "BEGIN; INSERT INTO t_full VALUES ('k4', 4, 'm'); SELECT pg_logical_emit_message(true, 'oracle', 'inside'); COMMIT;",
    "SELECT pg_logical_emit_message(false, 'oracle', 'outside')",
    "TRUNCATE t_full",
    "TRUNCATE t_full, t_compound RESTART IDENTITY CASCADE",
];

fn quote_ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// test_decoding's print_literal.
fn literal(type_oid: u32, text: &str) -> String {
    match type_oid {
        20 | 21 | 23 | 26 | 700 | 701 | 1700 => text.to_owned(),
        1560 | 1562 => format!("B'{text}'"),
        16 => if text == "t" { "true" } else { "false" }.to_owned(),
        _ => format!("'{}'", text.replace('\'', "''")),
    }
}

/// test_decoding's tuple_to_stringinfo.
fn tuple(
    out: &mut String,
    cols: &[RelationColumn<'_>],
    t: &TupleData<'_>,
    types: &HashMap<u32, String>,
    skip_nulls: bool,
) {
    assert_eq!(cols.len(), t.columns.len(), "tuple width");
    for (c, v) in cols.iter().zip(&t.columns) {
        if skip_nulls && matches!(v, Column::Null) {
            continue;
        }
        let ty = types.get(&c.type_oid).unwrap_or_else(|| panic!("type {} unknown", c.type_oid));
        out.push_str(&format!(" {}[{ty}]:", quote_ident(c.name)));
        match v {
            Column::Null => out.push_str("null"),
            Column::UnchangedToast => out.push_str("unchanged-toast-datum"),
            Column::Text(b) => out.push_str(&literal(c.type_oid, std::str::from_utf8(b).expect("UTF-8 text"))),
            Column::Binary(_) => panic!("binary columns were not asked for"),
        }
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

#[test]
fn decoded_pgoutput_equals_what_test_decoding_reports() {
    let db = cluster().new_empty_db("decode oracle");
    db.psql(DDL);
    let (td, po) = (format!("{}_td", db.name()), format!("{}_po", db.name()));
    db.psql(&format!("SELECT pg_create_logical_replication_slot('{td}', 'test_decoding')"));
    db.psql(&format!("SELECT pg_create_logical_replication_slot('{po}', 'pgoutput')"));
    for sql in WORKLOAD {
        db.psql(sql);
    }

    let expected: Vec<String> = db
        .psql(&format!(
            "SELECT encode(convert_to(data, 'UTF8'), 'hex')
               FROM pg_logical_slot_get_changes('{td}', NULL, NULL, 'include-xids', '0', 'skip-empty-xacts', '1')"
        ))
        .lines()
        .map(|l| String::from_utf8(unhex(l)).expect("UTF-8"))
        .collect();
    let raw: Vec<Vec<u8>> = db
        .psql(&format!(
            "SELECT encode(data, 'hex') FROM pg_logical_slot_get_binary_changes('{po}', NULL, NULL,
               'proto_version', '1', 'publication_names', 'oracle_pub', 'messages', 'true')"
        ))
        .lines()
        .map(unhex)
        .collect();
    let types: HashMap<u32, String> = db
        .psql("SELECT oid || '|' || format_type(oid, NULL) FROM pg_type")
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(o, n)| (o.parse().expect("oid"), n.to_owned()))
        .collect();

    let mut relations: HashMap<u32, (String, Vec<RelationColumn<'_>>)> = HashMap::new();
    let mut got = Vec::new();
    for bytes in &raw {
        let msg = pgoutput::decode(bytes).unwrap_or_else(|e| panic!("decode {bytes:02x?}: {e}"));
        let mut line = String::new();
        match msg {
            Message::Begin(_) => line.push_str("BEGIN"),
            Message::Commit(_) => line.push_str("COMMIT"),
            Message::Relation(r) => {
                relations.insert(r.id, (format!("{}.{}", quote_ident(r.namespace), quote_ident(r.name)), r.columns));
                continue;
            }
            Message::Type(_) | Message::Origin(_) => continue,
            Message::Insert(i) => {
                let (name, cols) = &relations[&i.relation_id];
                line.push_str(&format!("table {name}: INSERT:"));
                tuple(&mut line, cols, &i.new, &types, false);
            }
            Message::Update(u) => {
                let (name, cols) = &relations[&u.relation_id];
                line.push_str(&format!("table {name}: UPDATE:"));
                if let Some(old) = &u.old {
                    line.push_str(" old-key:");
                    tuple(&mut line, cols, old, &types, true);
                    line.push_str(" new-tuple:");
                }
                tuple(&mut line, cols, &u.new, &types, false);
            }
            Message::Delete(d) => {
                let (name, cols) = &relations[&d.relation_id];
                line.push_str(&format!("table {name}: DELETE:"));
                tuple(&mut line, cols, &d.old, &types, true);
            }
            Message::Truncate(t) => {
                let names: Vec<&str> = t.relation_ids.iter().map(|r| relations[r].0.as_str()).collect();
                line.push_str(&format!("table {}: TRUNCATE:", names.join(", ")));
                if t.options == 0 {
                    line.push_str(" (no-flags)");
                }
                if t.options & 2 != 0 {
                    line.push_str(" restart_seqs");
                }
                if t.options & 1 != 0 {
                    line.push_str(" cascade");
                }
            }
            Message::Message(m) => {
                line.push_str(&format!(
                    "message: transactional: {} prefix: {}, sz: {} content:{}",
                    m.flags & 1,
                    m.prefix,
                    m.content.len(),
                    String::from_utf8_lossy(m.content)
                ));
            }
        }
        got.push(line);
    }

    // The workload reached both, whole: a sanity floor before comparing.
    assert!(expected.len() >= 30, "test_decoding reported only {} lines: {expected:#?}", expected.len());
    for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(g, e, "line {i} differs (first difference)");
    }
    assert_eq!(got.len(), expected.len(), "got:\n{got:#?}\nexpected:\n{expected:#?}");
    // What the comparison covered.
    let all = expected.join("\n");
    for needle in [
        "unchanged-toast-datum",
        "old-key:",
        "TRUNCATE: (no-flags)",
        "restart_seqs cascade",
        "message: transactional: 0",
    ] {
        assert!(all.contains(needle), "the workload did not exercise {needle:?}");
    }
    db.psql(&format!("SELECT pg_drop_replication_slot('{td}'), pg_drop_replication_slot('{po}')"));
}
