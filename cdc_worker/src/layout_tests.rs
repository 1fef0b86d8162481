//! Tests of the crate's shape (issue 15): the modules depend on each other
//! without a circle, and only [`crate::extension`] sends SQL that names a
//! `sync` object.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The code of a file without its comments (line comments only: the crate
/// has no block comments).
fn code(p: &Path) -> String {
    let text = std::fs::read_to_string(p).expect("read");
    text.lines()
        .map(|l| match l.find("//") {
            // `//` inside a string (a URL) is kept: only a leading comment or
            // one after code preceded by a space is cut.
            Some(i) if l[..i].trim().is_empty() || (l[..i].ends_with(' ') && !l[..i].contains('"')) => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a source file belongs to.
fn module_of(p: &Path) -> Option<String> {
    let rel = p.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.trim_end_matches(".rs").to_owned();
    (!matches!(first.as_str(), "lib" | "main" | "layout_tests")).then_some(first)
}

#[test]
fn the_modules_depend_on_each_other_without_a_circle() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(m) = module_of(f) else { continue };
        let text = code(f);
        let entry = deps.entry(m.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if name != m && name != "VERSION" && !name.is_empty() {
                entry.insert(name);
            }
        }
    }
    assert!(deps.len() >= 8, "{deps:?}");
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut circle = path[i..].to_vec();
            circle.push(m.to_owned());
            return Some(circle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for d in deps.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for m in deps.keys() {
        if let Some(circle) = visit(m, &deps, &mut Vec::new(), &mut done) {
            panic!("a circle between modules: {}\n{deps:#?}", circle.join(" -> "));
        }
    }
    // The layers: plumbing knows nothing above it.
    for low in ["pg", "source", "error"] {
        let above: Vec<&String> =
            deps[low].iter().filter(|d| !matches!(d.as_str(), "pg" | "source" | "error")).collect();
        assert!(above.is_empty(), "{low} uses {above:?}");
    }
    // Anything may count into the metrics: they use nothing but the error type.
    let metrics_uses: Vec<&String> = deps["metrics"].iter().filter(|d| d.as_str() != "error").collect();
    assert!(metrics_uses.is_empty(), "metrics uses {metrics_uses:?}");
}

#[test]
fn only_the_contract_module_sends_sql_naming_sync() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let calls =
        [".query(", ".query_one(", ".query_opt(", ".execute(", ".batch_execute(", ".simple_query(", ".prepare("];
    let mut found = Vec::new();
    let mut contract_calls = 0;
    for f in files.iter().filter(|f| !f.ends_with("layout_tests.rs")) {
        let text = code(f);
        let is_contract = f.ends_with("extension.rs");
        for call in calls {
            for (i, _) in text.match_indices(call) {
                // The SQL: the first string literal after the call.
                let rest = &text[i + call.len()..];
                let Some(q) = rest.find('"') else { continue };
                let lit: String = rest[q + 1..].chars().take_while(|c| *c != '"').collect();
                if lit.contains("sync.") {
                    if is_contract {
                        contract_calls += 1;
                    } else {
                        found.push(format!("{}: {}", f.display(), lit.lines().next().unwrap_or("")));
                    }
                }
            }
        }
        // No module but the contract writes a sync table.
        if !is_contract {
            for w in ["INSERT INTO sync.", "UPDATE sync.", "DELETE FROM sync."] {
                assert!(!text.contains(w), "{} writes a sync table ({w})", f.display());
            }
        }
    }
    assert!(found.is_empty(), "SQL naming sync outside src/extension.rs:\n{}", found.join("\n"));
    assert!(contract_calls >= 15, "the contract module's calls were not found ({contract_calls}): is the scan broken?");
}
