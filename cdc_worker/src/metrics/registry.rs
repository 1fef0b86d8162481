//! The registry's parts: metric families (a name, a help text, a type, the
//! label names and, for histograms, the buckets) holding one series per
//! label set, and their rendering in Prometheus's text exposition format
//! (version 0.0.4).
//!
//! Label values must come from small fixed sets (a target's or a
//! definition's name, an operation, an outcome, a status code): a family
//! never sees a key or any other value that grows with the data.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A metric family's type, as the `# TYPE` line spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the process starts); the name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted in cumulative buckets, with their sum and count.
    Histogram,
}

impl Kind {
    /// The `# TYPE` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Buckets for durations of requests and batches (seconds).
pub const LATENCY_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Buckets for run lengths (seconds: a pull round lasts a second, a stream
/// run days).
pub const RUN_BUCKETS: &[f64] =
    &[0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 24.0 * 3600.0, 7.0 * 24.0 * 3600.0];

/// A number stored as the bits of an `f64`, changed atomically.
#[derive(Debug, Default)]
pub struct Cell(AtomicU64);

impl Cell {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    fn add(&self, v: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + v).to_bits()));
    }
}

/// A histogram series: counts per bucket (not cumulative), sum and count,
/// changed together so that a scrape never sees them disagree.
#[derive(Debug)]
pub struct HistogramData {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug)]
enum Series {
    Value(Cell),
    Histogram(Mutex<HistogramData>),
}

/// A counter of one label set: cheap to keep and bump on a hot path.
#[derive(Debug, Clone)]
pub struct Counter(Arc<Series>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1.0);
    }

    /// Adds `v` (a counter never goes down: a negative or not finite `v`
    /// is ignored).
    pub fn add(&self, v: f64) {
        if let Series::Value(c) = &*self.0 {
            if v.is_finite() && v > 0.0 {
                c.add(v);
            }
        }
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        match &*self.0 {
            Series::Value(c) => c.get(),
            Series::Histogram(_) => f64::NAN,
        }
    }
}

/// A gauge of one label set.
#[derive(Debug, Clone)]
pub struct Gauge(Arc<Series>);

impl Gauge {
    /// Sets the value (a value that is not finite is ignored).
    pub fn set(&self, v: f64) {
        if let Series::Value(c) = &*self.0 {
            if v.is_finite() {
                c.set(v);
            }
        }
    }

    /// The current value.
    pub fn get(&self) -> f64 {
        match &*self.0 {
            Series::Value(c) => c.get(),
            Series::Histogram(_) => f64::NAN,
        }
    }
}

/// A histogram of one label set.
#[derive(Debug, Clone)]
pub struct Histogram {
    series: Arc<Series>,
    buckets: &'static [f64],
}

impl Histogram {
    /// Counts one observation (a value that is not finite is ignored; a
    /// negative one, a clock that went back, counts as 0).
    pub fn observe(&self, v: f64) {
        if !v.is_finite() {
            return;
        }
        let v = v.max(0.0);
        if let Series::Histogram(h) = &*self.series {
            let mut h = lock(h);
            let i = self.buckets.iter().position(|b| v <= *b).unwrap_or(self.buckets.len());
            h.counts[i] += 1;
            h.sum += v;
            h.count += 1;
        }
    }

    /// Observations so far, and their sum.
    pub fn count_and_sum(&self) -> (u64, f64) {
        match &*self.series {
            Series::Histogram(h) => {
                let h = lock(h);
                (h.count, h.sum)
            }
            Series::Value(_) => (0, 0.0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A metric family: its description and one series per label set.
#[derive(Debug)]
pub struct Family {
    /// The metric's name (`syncbridge_…`; counters end in `_total`).
    pub name: &'static str,
    /// What it measures, in one line.
    pub help: &'static str,
    /// Its type.
    pub kind: Kind,
    /// Its label names, in the order values are given.
    pub labels: &'static [&'static str],
    /// A histogram's bucket bounds (increasing; `+Inf` is implied).
    pub buckets: &'static [f64],
    series: Mutex<BTreeMap<Vec<String>, Arc<Series>>>,
}

impl Family {
    /// A counter family.
    pub const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self::new(name, help, Kind::Counter, labels, &[])
    }

    /// A gauge family.
    pub const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Self {
        Self::new(name, help, Kind::Gauge, labels, &[])
    }

    /// A histogram family with these bucket bounds.
    pub const fn histogram(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        Self::new(name, help, Kind::Histogram, labels, buckets)
    }

    const fn new(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        Self { name, help, kind, labels, buckets, series: Mutex::new(BTreeMap::new()) }
    }

    /// The series of `values` (one per label name), created at zero.
    fn series(&self, values: &[&str]) -> Arc<Series> {
        debug_assert_eq!(values.len(), self.labels.len(), "{}: label values {values:?}", self.name);
        let mut key: Vec<String> = values.iter().take(self.labels.len()).map(|v| (*v).to_owned()).collect();
        key.resize(self.labels.len(), String::new());
        let mut series = lock(&self.series);
        series
            .entry(key)
            .or_insert_with(|| {
                Arc::new(match self.kind {
                    Kind::Histogram => Series::Histogram(Mutex::new(HistogramData {
                        counts: vec![0; self.buckets.len() + 1],
                        sum: 0.0,
                        count: 0,
                    })),
                    Kind::Counter | Kind::Gauge => Series::Value(Cell::default()),
                })
            })
            .clone()
    }

    /// The counter of `values` (created at 0).
    pub fn counter_of(&self, values: &[&str]) -> Counter {
        debug_assert_eq!(self.kind, Kind::Counter, "{} is not a counter", self.name);
        Counter(self.series(values))
    }

    /// The gauge of `values` (created at 0).
    pub fn gauge_of(&self, values: &[&str]) -> Gauge {
        debug_assert_eq!(self.kind, Kind::Gauge, "{} is not a gauge", self.name);
        Gauge(self.series(values))
    }

    /// The histogram of `values` (created empty).
    pub fn histogram_of(&self, values: &[&str]) -> Histogram {
        debug_assert_eq!(self.kind, Kind::Histogram, "{} is not a histogram", self.name);
        Histogram { series: self.series(values), buckets: self.buckets }
    }

    /// Adds one to the counter of `values`.
    pub fn inc(&self, values: &[&str]) {
        self.counter_of(values).inc();
    }

    /// Adds `v` to the counter of `values`.
    pub fn add(&self, values: &[&str], v: f64) {
        self.counter_of(values).add(v);
    }

    /// Makes the counter of `values` exist (at 0 when new), so that it is
    /// exposed before anything happened.
    pub fn touch(&self, values: &[&str]) {
        self.series(values);
    }

    /// Sets the gauge of `values`.
    pub fn set(&self, values: &[&str], v: f64) {
        self.gauge_of(values).set(v);
    }

    /// Counts one observation in the histogram of `values`.
    pub fn observe(&self, values: &[&str], v: f64) {
        self.histogram_of(values).observe(v);
    }

    /// Replaces every series of a gauge family by these (a sample of the
    /// database: series that are gone, such as a dropped definition's,
    /// disappear).
    pub fn replace(&self, samples: Vec<(Vec<String>, f64)>) {
        debug_assert_eq!(self.kind, Kind::Gauge, "{}: only gauges are replaced", self.name);
        let mut fresh = BTreeMap::new();
        for (mut key, v) in samples {
            key.resize(self.labels.len(), String::new());
            let cell = Cell::default();
            cell.set(if v.is_finite() { v } else { 0.0 });
            fresh.insert(key, Arc::new(Series::Value(cell)));
        }
        *lock(&self.series) = fresh;
    }

    /// The value of a counter or gauge series, if it exists.
    pub fn value(&self, values: &[&str]) -> Option<f64> {
        let key: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
        match lock(&self.series).get(&key).map(|s| &**s) {
            Some(Series::Value(c)) => Some(c.get()),
            _ => None,
        }
    }

    /// Writes the family in the text exposition format: `# HELP`, `# TYPE`,
    /// then its samples. A family without labels shows its zero before
    /// anything happened; one with labels only the label sets seen.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.as_str());
        if self.labels.is_empty() {
            self.series(&[]);
        }
        let series: Vec<(Vec<String>, Arc<Series>)> =
            lock(&self.series).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (values, s) in series {
            match &*s {
                Series::Value(c) => {
                    let _ = writeln!(out, "{}{} {}", self.name, label_set(self.labels, &values, None), number(c.get()));
                }
                Series::Histogram(h) => {
                    let (counts, sum, count) = {
                        let h = lock(h);
                        (h.counts.clone(), h.sum, h.count)
                    };
                    let mut cumulative = 0u64;
                    for (i, n) in counts.iter().enumerate() {
                        cumulative += n;
                        let le = self.buckets.get(i).map_or_else(|| "+Inf".to_owned(), |b| number(*b));
                        let labels = label_set(self.labels, &values, Some(&le));
                        let _ = writeln!(out, "{}_bucket{labels} {cumulative}", self.name);
                    }
                    let labels = label_set(self.labels, &values, None);
                    let _ = writeln!(out, "{}_sum{labels} {}", self.name, number(sum));
                    let _ = writeln!(out, "{}_count{labels} {count}", self.name);
                }
            }
        }
    }
}

/// `{a="x",b="y"}` (with `le` last for a bucket), or nothing without labels.
fn label_set(names: &[&str], values: &[String], le: Option<&str>) -> String {
    if names.is_empty() && le.is_none() {
        return String::new();
    }
    let mut out = String::from("{");
    let mut first = true;
    for (n, v) in names.iter().zip(values) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{n}=\"{}\"", escape_label(v));
    }
    if let Some(le) = le {
        if !first {
            out.push(',');
        }
        let _ = write!(out, "le=\"{le}\"");
    }
    out.push('}');
    out
}

/// A label value escaped: backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A help text escaped: backslash and line feed.
pub fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the format spells it (`+Inf`, `-Inf`, `NaN`, or a
/// decimal number).
pub fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Whether `name` is a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether `name` is a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`, not
/// starting with `__`, which Prometheus keeps for itself).
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    static C: Family = Family::counter("t_requests_total", "Requests.", &["target", "code"]);
    static G: Family = Family::gauge("t_depth", "Depth \\ with a\nnewline.", &[]);
    static H: Family = Family::histogram("t_latency_seconds", "Latency.", &["target"], &[0.1, 1.0]);

    #[test]
    fn counters_gauges_and_histograms_render_in_the_text_format() {
        C.inc(&["a", "200"]);
        C.add(&["a", "200"], 2.0);
        C.add(&["b\"\\\n", "429"], 0.5);
        C.add(&["a", "200"], -5.0);
        C.add(&["a", "200"], f64::NAN);
        G.set(&[], 7.25);
        H.observe(&["a"], 0.0625);
        H.observe(&["a"], 1.0);
        H.observe(&["a"], 0.09375);
        H.observe(&["a"], 3.0);
        H.observe(&["a"], -1.0);
        H.observe(&["a"], f64::INFINITY);
        let mut out = String::new();
        for f in [&C, &G, &H] {
            f.render(&mut out);
        }
        let want = "\
# HELP t_requests_total Requests.
# TYPE t_requests_total counter
t_requests_total{target=\"a\",code=\"200\"} 3
t_requests_total{target=\"b\\\"\\\\\\n\",code=\"429\"} 0.5
# HELP t_depth Depth \\\\ with a\\nnewline.
# TYPE t_depth gauge
t_depth 7.25
# HELP t_latency_seconds Latency.
# TYPE t_latency_seconds histogram
t_latency_seconds_bucket{target=\"a\",le=\"0.1\"} 3
t_latency_seconds_bucket{target=\"a\",le=\"1\"} 4
t_latency_seconds_bucket{target=\"a\",le=\"+Inf\"} 5
t_latency_seconds_sum{target=\"a\"} 4.15625
t_latency_seconds_count{target=\"a\"} 5
";
        assert_eq!(out, want);
    }

    #[test]
    fn an_unlabelled_family_shows_its_zero_and_replace_drops_old_series() {
        static Z: Family = Family::counter("t_z_total", "Z.", &[]);
        static HZ: Family = Family::histogram("t_hz_seconds", "HZ.", &[], &[1.0]);
        let mut out = String::new();
        Z.render(&mut out);
        HZ.render(&mut out);
        assert!(out.contains("\nt_z_total 0\n"), "{out}");
        assert!(out.contains("t_hz_seconds_bucket{le=\"1\"} 0\nt_hz_seconds_bucket{le=\"+Inf\"} 0\n"), "{out}");
        assert!(out.ends_with("t_hz_seconds_sum 0\nt_hz_seconds_count 0\n"), "{out}");

        static R: Family = Family::gauge("t_queue", "Queue.", &["state"]);
        R.replace(vec![(vec!["pending".into()], 3.0), (vec!["error".into()], 1.0)]);
        R.replace(vec![(vec!["pending".into()], 2.0)]);
        let mut out = String::new();
        R.render(&mut out);
        assert_eq!(out, "# HELP t_queue Queue.\n# TYPE t_queue gauge\nt_queue{state=\"pending\"} 2\n");
        assert_eq!(R.value(&["pending"]), Some(2.0));
        assert_eq!(R.value(&["error"]), None);
    }

    #[test]
    fn numbers_and_names_follow_the_format() {
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(1.0), "1");
        assert_eq!(number(0.005), "0.005");
        assert_eq!(number(-2.5), "-2.5");
        assert_eq!(number(1e21).parse::<f64>().ok(), Some(1e21));
        assert!(valid_metric_name("syncbridge_exports_total") && valid_metric_name("a:b"));
        assert!(!valid_metric_name("1abc") && !valid_metric_name("a-b") && !valid_metric_name(""));
        assert!(valid_label_name("target") && !valid_label_name("__name__") && !valid_label_name("a:b"));
    }
}
