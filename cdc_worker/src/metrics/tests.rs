//! The catalogue follows Prometheus's conventions, and the dashboard and
//! the README name exactly the metrics the worker has.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::*;

fn workspace_file(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `syncbridge_…` name in `text`.
fn names_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("syncbridge_") {
        let before = rest[..i].chars().next_back();
        let name: String =
            rest[i..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        rest = &rest[i + name.len()..];
        // Part of a longer word (`SYNCBRIDGE_…` variables are upper case).
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        out.push(name);
    }
    out
}

/// The family a sample name belongs to (a histogram's `_bucket`, `_sum`
/// and `_count` belong to it).
fn family_of(sample: &str) -> Option<&'static Family> {
    family(sample).or_else(|| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| family(sample.strip_suffix(suffix)?).filter(|f| f.kind == Kind::Histogram))
    })
}

#[test]
fn names_units_labels_and_buckets_follow_the_conventions() {
    let mut seen = BTreeSet::new();
    for f in ALL {
        assert!(seen.insert(f.name), "{} twice", f.name);
        assert!(valid_metric_name(f.name) && f.name.starts_with("syncbridge_"), "{}", f.name);
        assert!(!f.help.is_empty() && !f.help.contains('\n'), "{}: help", f.name);
        // Counters end in _total, nothing else does; base units only.
        assert_eq!(f.kind == Kind::Counter, f.name.ends_with("_total"), "{}", f.name);
        for bad in ["_milliseconds", "_ms", "_minutes", "_kb", "_mb", "_percent"] {
            assert!(!f.name.contains(bad), "{}: not a base unit", f.name);
        }
        if f.kind == Kind::Histogram {
            assert!(f.name.ends_with("_seconds"), "{}: histograms here measure seconds", f.name);
            assert!(!f.buckets.is_empty() && f.buckets.windows(2).all(|w| w[0] < w[1]), "{}", f.name);
            assert!(f.buckets.iter().all(|b| b.is_finite()), "{}: +Inf is implied", f.name);
            assert!(!f.labels.contains(&"le"), "{}", f.name);
        } else {
            assert!(f.buckets.is_empty(), "{}", f.name);
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            assert!(!f.name.ends_with(suffix), "{}: a histogram's sample name", f.name);
        }
        let labels: BTreeSet<&&str> = f.labels.iter().collect();
        assert_eq!(labels.len(), f.labels.len(), "{}: a label twice", f.name);
        for l in f.labels {
            assert!(valid_label_name(l), "{}: label {l}", f.name);
            // Nothing that grows with the data: no key, id, row or URL.
            for unbounded in ["key", "id", "url", "row", "item", "lsn", "error", "message", "path"] {
                assert!(!l.split('_').any(|w| w == unbounded), "{}: label {l} would not be bounded", f.name);
            }
        }
    }
    assert!(ALL.len() >= 30, "{}", ALL.len());
}

#[test]
fn the_whole_exposition_is_well_formed() {
    EXPORTS.inc(&["t", "add", "ok"]);
    TARGET_REQUESTS.inc(&["t", "api", &code_label(200)]);
    CLAIM_TO_COMPLETE.observe(&["t"], 0.2);
    let text = render();
    let mut typed = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(matches!(kind, "counter" | "gauge" | "histogram"), "{line}");
            assert!(typed.insert(name.to_owned()), "{name} typed twice");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let name: String = line.chars().take_while(|c| *c != '{' && *c != ' ').collect();
        let f = family_of(&name).unwrap_or_else(|| panic!("a sample of no family: {line}"));
        assert!(typed.contains(f.name), "{line} before its TYPE");
        let value = line.rsplit_once(' ').expect("a value").1;
        assert!(value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value), "{line}");
    }
    for f in ALL {
        assert!(typed.contains(f.name), "{} not exposed", f.name);
    }
    assert!(text.contains("syncbridge_exports_total{target=\"t\",op=\"add\",outcome=\"ok\"} "), "{text}");
    assert!(text.contains("syncbridge_export_claim_to_complete_seconds_bucket{target=\"t\",le=\"0.25\"} "), "{text}");
}

#[test]
fn status_codes_are_a_bounded_label() {
    assert_eq!(code_label(200), "200");
    assert_eq!(code_label(429), "429");
    assert_eq!(code_label(99), "other");
    assert_eq!(code_label(600), "other");
    assert_eq!(code_label(u16::MAX), "other");
}

#[test]
fn run_lengths_are_observed_by_kind_and_status() {
    run_started(-42, "pull");
    run_finished(-42, "succeeded");
    run_finished(-42, "succeeded");
    run_finished(-43, "failed");
    let (n, _) = RUN_DURATION.histogram_of(&["pull", "succeeded"]).count_and_sum();
    assert!(n >= 1);
    assert!(!render().contains("status=\"failed\",le"), "a run never started is not observed");
}

/// Every expression of the Grafana dashboard uses metrics the worker has,
/// and every metric the worker has is on the dashboard.
#[test]
fn the_dashboard_and_the_registry_cannot_drift_apart() {
    let text = workspace_file("deploy/grafana/syncbridge.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    exprs(&dash, &mut found);
    assert!(found.len() > 30, "{found:?}");
    let mut used = BTreeSet::new();
    for e in &found {
        for name in names_in(e) {
            let f =
                family_of(&name).unwrap_or_else(|| panic!("the dashboard uses {name}, which the worker lacks: {e}"));
            used.insert(f.name);
            // Histograms only through their samples.
            if f.kind == Kind::Histogram {
                assert_ne!(name, f.name, "{e}");
            }
        }
    }
    let unused: Vec<&str> = ALL.iter().map(|f| f.name).filter(|n| !used.contains(n)).collect();
    assert!(unused.is_empty(), "metrics not on the dashboard: {unused:?}");
    // The variables: a Prometheus data source.
    let vars = dash["templating"]["list"].as_array().expect("variables");
    assert!(vars.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus"), "{vars:?}");
    let panels = dash["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
    }
    let with_quantiles = found.iter().filter(|e| e.contains("histogram_quantile(")).count();
    assert!(with_quantiles >= 4, "{with_quantiles}");
}

/// The README's Metrics section lists exactly the metrics the worker has,
/// each with its type.
#[test]
fn the_readme_lists_every_metric_with_its_type() {
    let readme = workspace_file("README.md");
    let start = readme.find("\n### Metrics\n").expect("a Metrics section in the README");
    let section = &readme[start + 1..];
    let end = ["\n## ", "\n### "].iter().filter_map(|h| section[4..].find(h)).min().map_or(section.len(), |i| i + 4);
    let section = &section[..end];
    let mut listed = BTreeSet::new();
    for name in names_in(section) {
        let f = family_of(&name).unwrap_or_else(|| panic!("the README lists {name}, which the worker lacks"));
        listed.insert(f.name);
    }
    for f in ALL {
        assert!(listed.contains(f.name), "the README's Metrics section lacks {}", f.name);
        let row = section
            .lines()
            .find(|l| l.starts_with(&format!("| `{}`", f.name)))
            .unwrap_or_else(|| panic!("no table row for {}", f.name));
        assert!(row.contains(&format!("| {} |", f.kind.as_str())), "{}: its type in {row}", f.name);
        for l in f.labels {
            assert!(row.contains(&format!("`{l}`")), "{}: label {l} in {row}", f.name);
        }
    }
}
