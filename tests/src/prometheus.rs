//! A strict parser of Prometheus's text exposition format (version 0.0.4),
//! for tests that scrape the worker's `/metrics`: every line must follow
//! the grammar, and the exposition must be coherent.
//!
//! What it checks, beyond the grammar (metric and label names, label
//! values and their escapes, values, timestamps):
//! - `# HELP` and `# TYPE` at most once per family, before its samples;
//!   the type one of `counter`, `gauge`, `histogram`, `summary`, `untyped`;
//! - a family's samples in one group (never interleaved with another's),
//!   no series twice;
//! - a sample name belongs to its family: a counter's or gauge's own name;
//!   a histogram's `_bucket` (with `le`), `_sum`, `_count`; a summary's own
//!   name (with `quantile`), `_sum`, `_count`;
//! - counters not negative and not NaN;
//! - per histogram series: buckets with distinct, increasing `le`,
//!   cumulative counts that never decrease, a `+Inf` bucket equal to
//!   `_count`, and a `_sum` and a `_count`.

use std::collections::{BTreeMap, BTreeSet};

/// A sample: its name, labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (a histogram's with `_bucket`, `_sum`, `_count`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
    /// Its timestamp in milliseconds, if given.
    pub timestamp: Option<i64>,
}

/// A metric family: its help, type and samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Family {
    /// The `# HELP` text, unescaped.
    pub help: Option<String>,
    /// The `# TYPE` (`untyped` when none was given).
    pub kind: String,
    /// Its samples, in order.
    pub samples: Vec<Sample>,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// The families by name.
    pub families: BTreeMap<String, Family>,
}

impl Exposition {
    /// The samples named `sample` whose labels include `filter`.
    pub fn samples<'a>(
        &'a self,
        sample: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.families.values().flat_map(|f| f.samples.iter()).filter(move |s| {
            s.name == sample && filter.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the samples named `sample` whose labels include `filter`
    /// (0 when there is none).
    pub fn sum(&self, sample: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples(sample, filter).map(|s| s.value).sum()
    }

    /// The one sample named `sample` with exactly these labels.
    pub fn value(&self, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.samples(sample, &[]).find(|s| s.labels == want).map(|s| s.value)
    }
}

/// Why an exposition is refused: the line (1-based) and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// The line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Whether `s` is a metric name.
pub fn metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(is_name_start) && c.all(is_name_char)
}

/// Whether `s` is a label name.
pub fn label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A value as Go's `strconv.ParseFloat` reads the format's values:
/// a decimal or exponent number, `+Inf`, `-Inf`, `NaN`.
pub fn value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        "NaN" => return Some(f64::NAN),
        _ => {}
    }
    // Digits, one point, an exponent: nothing Rust would also take
    // (`inf`, `infinity`, `nan` in other spellings).
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let digits = mantissa.chars().filter(char::is_ascii_digit).count();
    let points = mantissa.chars().filter(|c| *c == '.').count();
    if digits == 0 || points > 1 || digits + points != mantissa.len() {
        return None;
    }
    if let Some(e) = exp {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        if e.is_empty() || !e.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
    }
    s.parse().ok()
}

struct Cursor<'a> {
    s: &'a str,
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.s[self.i..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += c.len_utf8();
        Some(c)
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &str {
        let start = self.i;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        &self.s[start..self.i]
    }

    fn rest(&self) -> &str {
        &self.s[self.i..]
    }
}

/// Parses a label set after `{`, up to and including `}`.
fn labels(c: &mut Cursor<'_>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    loop {
        c.take_while(|ch| ch == ' ' || ch == '\t');
        if c.peek() == Some('}') {
            c.bump();
            return Ok(out);
        }
        let name = c.take_while(|ch| ch.is_ascii_alphanumeric() || ch == '_').to_owned();
        if !label_name(&name) {
            return Err(format!("a bad label name {name:?} at {:?}", c.rest()));
        }
        c.take_while(|ch| ch == ' ' || ch == '\t');
        if c.bump() != Some('=') {
            return Err(format!("label {name}: '=' expected"));
        }
        c.take_while(|ch| ch == ' ' || ch == '\t');
        if c.bump() != Some('"') {
            return Err(format!("label {name}: a quoted value expected"));
        }
        let mut v = String::new();
        loop {
            match c.bump() {
                None => return Err(format!("label {name}: the value never ends")),
                Some('"') => break,
                Some('\\') => match c.bump() {
                    Some('\\') => v.push('\\'),
                    Some('"') => v.push('"'),
                    Some('n') => v.push('\n'),
                    other => return Err(format!("label {name}: a bad escape \\{other:?}")),
                },
                Some('\n') => return Err(format!("label {name}: a raw line feed")),
                Some(ch) => v.push(ch),
            }
        }
        if out.insert(name.clone(), v).is_some() {
            return Err(format!("label {name} twice"));
        }
        c.take_while(|ch| ch == ' ' || ch == '\t');
        match c.bump() {
            Some(',') => {}
            Some('}') => return Ok(out),
            other => return Err(format!("',' or '}}' expected after label {name}, got {other:?}")),
        }
    }
}

/// Unescapes a `# HELP` text (`\\` and `\n` only).
fn help_text(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch != '\\' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            other => return Err(format!("a bad escape in HELP: \\{other:?}")),
        }
    }
    Ok(out)
}

const KINDS: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];

/// The family a sample name belongs to, given the types declared so far.
fn family_of(name: &str, families: &BTreeMap<String, Family>) -> String {
    for (suffix, kinds) in
        [("_bucket", &["histogram"][..]), ("_sum", &["histogram", "summary"]), ("_count", &["histogram", "summary"])]
    {
        if let Some(base) = name.strip_suffix(suffix) {
            if families.get(base).is_some_and(|f| kinds.contains(&f.kind.as_str())) {
                return base.to_owned();
            }
        }
    }
    name.to_owned()
}

/// Parses and checks an exposition.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    // Families with samples, in order; a family must not come back.
    let mut order: Vec<String> = Vec::new();
    let mut series: BTreeSet<(String, BTreeMap<String, String>)> = BTreeSet::new();
    let mut typed: BTreeSet<String> = BTreeSet::new();
    let mut helped: BTreeSet<String> = BTreeSet::new();
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(ParseError { line: text.lines().count(), message: "the last line does not end with \\n".into() });
    }
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let err = |message: String| ParseError { line: n, message };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim_start_matches([' ', '\t']);
            let (word, rest) = comment.split_once([' ', '\t']).unwrap_or((comment, ""));
            if word != "HELP" && word != "TYPE" {
                continue; // another comment
            }
            let rest = rest.trim_start_matches([' ', '\t']);
            let (name, arg) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
            if !metric_name(name) {
                return Err(err(format!("{word} of a bad metric name {name:?}")));
            }
            if families.get(name).is_some_and(|f| !f.samples.is_empty()) {
                return Err(err(format!("{word} of {name} after its samples")));
            }
            let fam = families
                .entry(name.to_owned())
                .or_insert_with(|| Family { kind: "untyped".into(), ..Family::default() });
            if word == "HELP" {
                if !helped.insert(name.to_owned()) {
                    return Err(err(format!("HELP of {name} twice")));
                }
                fam.help = Some(help_text(arg).map_err(err)?);
            } else {
                let kind = arg.trim_end_matches([' ', '\t']);
                if !KINDS.contains(&kind) {
                    return Err(err(format!("TYPE of {name}: unknown type {kind:?}")));
                }
                if !typed.insert(name.to_owned()) {
                    return Err(err(format!("TYPE of {name} twice")));
                }
                fam.kind = kind.to_owned();
            }
            continue;
        }
        // A sample.
        let mut c = Cursor { s: line, i: 0 };
        let name = c.take_while(is_name_char).to_owned();
        if !metric_name(&name) {
            return Err(err(format!("a bad metric name {name:?}")));
        }
        let blank = !c.take_while(|ch| ch == ' ' || ch == '\t').is_empty();
        let labels = if c.peek() == Some('{') {
            c.bump();
            let labels = labels(&mut c).map_err(err)?;
            if !c.rest().starts_with([' ', '\t']) {
                return Err(err(format!("a blank expected before the value of {name}")));
            }
            labels
        } else if blank {
            BTreeMap::new()
        } else {
            return Err(err(format!("a blank expected before the value of {name}")));
        };
        let fields: Vec<&str> = c.rest().split([' ', '\t']).filter(|f| !f.is_empty()).collect();
        let (v, ts) = match fields.as_slice() {
            [v] => (*v, None),
            [v, ts] => (*v, Some(*ts)),
            _ => return Err(err(format!("a value (and a timestamp) expected, got {:?}", c.rest()))),
        };
        let value = value(v).ok_or_else(|| err(format!("a bad value {v:?}")))?;
        let timestamp = match ts {
            Some(t) => Some(t.parse::<i64>().map_err(|_| err(format!("a bad timestamp {t:?}")))?),
            None => None,
        };
        let family = family_of(&name, &families);
        let fam =
            families.entry(family.clone()).or_insert_with(|| Family { kind: "untyped".into(), ..Family::default() });
        // The sample's name and labels fit its family's type.
        let suffix = name.strip_prefix(family.as_str()).unwrap_or("");
        match (fam.kind.as_str(), suffix) {
            ("histogram", "_bucket") => {
                if !labels.contains_key("le") {
                    return Err(err(format!("{name} without le")));
                }
            }
            ("histogram", "_sum" | "_count") | ("summary", "_sum" | "_count") | ("summary", "") => {}
            ("histogram", _) => return Err(err(format!("{name}: not a sample of histogram {family}"))),
            (_, "") => {}
            (kind, _) => return Err(err(format!("{name}: not a sample of {kind} {family}"))),
        }
        if fam.kind == "histogram" && suffix != "_bucket" && labels.contains_key("le") {
            return Err(err(format!("{name}: le on a histogram's {suffix}")));
        }
        if fam.kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(err(format!("counter {name} is {v}")));
        }
        if (fam.kind == "histogram" || fam.kind == "summary") && suffix == "_count" && (value.is_nan() || value < 0.0) {
            return Err(err(format!("{name} is {v}")));
        }
        if order.last() != Some(&family) {
            if order.contains(&family) {
                return Err(err(format!("the samples of {family} are not in one group")));
            }
            order.push(family.clone());
        }
        if !series.insert((name.clone(), labels.clone())) {
            return Err(err(format!("{name}{labels:?} twice")));
        }
        fam.samples.push(Sample { name, labels, value, timestamp });
    }
    let exposition = Exposition { families };
    check_histograms(&exposition).map_err(|message| ParseError { line: 0, message })?;
    Ok(exposition)
}

/// Each histogram series: increasing `le`, counts that never decrease, a
/// `+Inf` bucket equal to `_count`, a `_sum`.
fn check_histograms(e: &Exposition) -> Result<(), String> {
    for (name, f) in e.families.iter().filter(|(_, f)| f.kind == "histogram") {
        let mut by_series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        let mut sums = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for s in &f.samples {
            let mut key = s.labels.clone();
            if s.name.ends_with("_bucket") {
                let le = key.remove("le").unwrap_or_default();
                let le = value(&le).filter(|v| !v.is_nan()).ok_or_else(|| format!("{name}: a bad le {le:?}"))?;
                by_series.entry(key).or_default().push((le, s.value));
            } else if s.name.ends_with("_sum") {
                sums.insert(key, s.value);
            } else {
                counts.insert(key, s.value);
            }
        }
        let keys: BTreeSet<&BTreeMap<String, String>> =
            by_series.keys().chain(sums.keys()).chain(counts.keys()).collect();
        for key in keys {
            let buckets = by_series.get(key).ok_or_else(|| format!("{name}{key:?}: no buckets"))?;
            for w in buckets.windows(2) {
                if w[0].0 >= w[1].0 {
                    return Err(format!("{name}{key:?}: le {} then {}", w[0].0, w[1].0));
                }
                if w[0].1 > w[1].1 {
                    return Err(format!("{name}{key:?}: bucket counts decrease at le {}", w[1].0));
                }
            }
            let inf = buckets
                .last()
                .filter(|b| b.0 == f64::INFINITY)
                .ok_or_else(|| format!("{name}{key:?}: no +Inf bucket"))?;
            let count = counts.get(key).ok_or_else(|| format!("{name}{key:?}: no _count"))?;
            if inf.1 != *count {
                return Err(format!("{name}{key:?}: +Inf bucket {} but _count {count}", inf.1));
            }
            if !sums.contains_key(key) {
                return Err(format!("{name}{key:?}: no _sum"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"# HELP a_total Things, with a \\ and a\nnewline.
# TYPE a_total counter
a_total{x="1",y="q\"u\\o\nte"} 3
a_total{x="2"} 1.5e3 1700000000000
# a comment
# TYPE g gauge
g -Inf
# TYPE h_seconds histogram
h_seconds_bucket{t="a",le="0.1"} 1
h_seconds_bucket{t="a",le="1"} 2
h_seconds_bucket{t="a",le="+Inf"} 3
h_seconds_sum{t="a"} 4.5
h_seconds_count{t="a"} 3
u 1
"#;

    #[test]
    fn a_good_exposition_parses() {
        let e = parse(GOOD).unwrap();
        let a = &e.families["a_total"];
        assert_eq!(a.kind, "counter");
        assert_eq!(a.help.as_deref(), Some("Things, with a \\ and a\nnewline."));
        assert_eq!(e.value("a_total", &[("x", "1"), ("y", "q\"u\\o\nte")]), Some(3.0));
        assert_eq!(e.sum("a_total", &[]), 1503.0);
        assert_eq!(a.samples[1].timestamp, Some(1_700_000_000_000));
        assert_eq!(e.value("g", &[]), Some(f64::NEG_INFINITY));
        assert_eq!(e.families["h_seconds"].samples.len(), 5);
        assert_eq!(e.sum("h_seconds_count", &[("t", "a")]), 3.0);
        assert_eq!(e.families["u"].kind, "untyped");
    }

    #[test]
    fn bad_expositions_are_refused() {
        let bad = [
            ("# TYPE a counter\na -1\n", "counter a is -1"),
            ("# TYPE a counter\na NaN\n", "counter a"),
            ("# TYPE a gauge\na{x=\"1\"} 1\n# TYPE b gauge\nb 1\na{x=\"2\"} 1\n", "not in one group"),
            ("a 1\n# TYPE a gauge\n", "after its samples"),
            ("# TYPE a gauge\n# TYPE a gauge\n", "twice"),
            ("# HELP a x\n# HELP a y\n", "twice"),
            ("# TYPE a meter\n", "unknown type"),
            ("# TYPE a gauge\na 1\na 2\n", "twice"),
            ("1a 1\n", "bad metric name"),
            ("a-b 1\n", "blank expected"),
            ("a{1x=\"1\"} 1\n", "bad label name"),
            ("a{x=1} 1\n", "quoted value"),
            ("a{x=\"\\t\"} 1\n", "bad escape"),
            ("a{x=\"1\",x=\"2\"} 1\n", "twice"),
            ("a{x=\"1\" 1\n", "expected after label"),
            ("a 1x\n", "bad value"),
            ("a inf\n", "bad value"),
            ("a 0x10\n", "bad value"),
            ("a 1 2 3\n", "a value"),
            ("a 1 1.5\n", "bad timestamp"),
            ("a 1", "does not end"),
            ("# HELP a bad \\t\n", "bad escape in HELP"),
            ("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", "decrease"),
            ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n", "+Inf bucket 2"),
            ("# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", "no +Inf"),
            ("# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", "le 2 then 1"),
            ("# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", "no _sum"),
            ("# TYPE h histogram\nh_bucket 1\n", "without le"),
            ("# TYPE h histogram\nh 1\n", "not a sample of histogram"),
            ("# TYPE h histogram\nh_bucket{le=\"x\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", "bad le"),
        ];
        for (text, want) in bad {
            match parse(text) {
                Ok(e) => panic!("accepted {text:?}: {e:?}"),
                Err(e) => assert!(e.to_string().contains(want), "{text:?}: {e} (wanted {want:?})"),
            }
        }
    }

    #[test]
    fn values_are_read_as_the_format_spells_them() {
        for (s, v) in [("1", 1.0), ("-2.5", -2.5), ("1e3", 1000.0), ("+1.5E-2", 0.015), (".5", 0.5), ("5.", 5.0)] {
            assert_eq!(value(s), Some(v), "{s}");
        }
        assert!(value("NaN").unwrap().is_nan());
        for s in ["", "+", ".", "1e", "e5", "1.2.3", "infinity", "nan", "1_000", " 1"] {
            assert_eq!(value(s), None, "{s:?}");
        }
    }
}
