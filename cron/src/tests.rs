use super::*;

fn schedule(expr: &str) -> Schedule {
    Schedule::parse(expr).unwrap_or_else(|e| panic!("{expr:?}: {e}"))
}

fn refusal(expr: &str) -> String {
    match Schedule::parse(expr) {
        Ok(s) => panic!("{expr:?} was accepted: {s:?}"),
        Err(e) => e.to_string(),
    }
}

fn values(bits: u64) -> Vec<u32> {
    (0..64).filter(|v| bits & 1 << v != 0).collect()
}

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn tz(name: &str) -> TimeZone {
    time_zone(name).unwrap()
}

/// The next `n` runs after `after`, as UTC timestamps.
fn runs(expr: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
    let (s, zone) = (schedule(expr), tz(zone));
    let mut t = at(after);
    let mut out = Vec::new();
    for _ in 0..n {
        t = s.next_after(&zone, t).unwrap_or_else(|| panic!("{expr:?}: no run after {t}"));
        out.push(t.to_string());
    }
    out
}

#[test]
fn fields_accept_every_form() {
    assert_eq!(values(schedule("* * * * *").minutes), (0..60).collect::<Vec<_>>());
    assert_eq!(values(schedule("5 * * * *").minutes), [5]);
    assert_eq!(values(schedule("1-5 * * * *").minutes), [1, 2, 3, 4, 5]);
    assert_eq!(values(schedule("*/15 * * * *").minutes), [0, 15, 30, 45]);
    assert_eq!(values(schedule("10-30/10 * * * *").minutes), [10, 20, 30]);
    assert_eq!(values(schedule("5/20 * * * *").minutes), [5, 25, 45]);
    assert_eq!(values(schedule("1,3,5-7,*/30,59 * * * *").minutes), [0, 1, 3, 5, 6, 7, 30, 59]);
    assert_eq!(values(schedule("0 */6 * * *").hours), [0, 6, 12, 18]);
    assert_eq!(values(schedule("0 9-17/4 * * *").hours), [9, 13, 17]);
    assert_eq!(values(schedule("0 0 */10 * *").days_of_month), [1, 11, 21, 31]);
    assert_eq!(values(schedule("0 0 1,15 * *").days_of_month), [1, 15]);
    assert_eq!(values(schedule("0 0 * */3 *").months), [1, 4, 7, 10]);
    assert_eq!(values(schedule("0 0 * jan *").months), [1]);
    assert_eq!(values(schedule("0 0 * JAN-Mar,dec *").months), [1, 2, 3, 12]);
    assert_eq!(values(schedule("0 0 * feb/5 *").months), [2, 7, 12]);
    assert_eq!(values(schedule("0 0 * * mon-fri").days_of_week), [1, 2, 3, 4, 5]);
    assert_eq!(values(schedule("0 0 * * SUN,Sat").days_of_week), [0, 6]);
    assert_eq!(values(schedule("0 0 * * */2").days_of_week), [0, 2, 4, 6]);
    // Sunday is 0 and 7: both land on 0.
    assert_eq!(values(schedule("0 0 * * 0").days_of_week), [0]);
    assert_eq!(values(schedule("0 0 * * 7").days_of_week), [0]);
    assert_eq!(values(schedule("0 0 * * 5-7").days_of_week), [0, 5, 6]);
    assert_eq!(values(schedule("0 0 * * fri-7").days_of_week), [0, 5, 6]);
    assert_eq!(values(schedule("0 0 * * */7").days_of_week), [0]);
    assert_eq!(values(schedule("0 0 * * *").days_of_week), [0, 1, 2, 3, 4, 5, 6]);
}

#[test]
fn whitespace_separates_and_surrounds_fields() {
    assert_eq!(schedule("  0\t0  1 *   *\t"), schedule("0 0 1 * *"));
    assert_eq!(schedule("\n0 0 1 * *\n"), schedule("0 0 1 * *"));
}

#[test]
fn nicknames_stand_for_their_fields() {
    for (nickname, fields) in [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ] {
        assert_eq!(schedule(nickname), schedule(fields), "{nickname}");
    }
    assert_eq!(schedule(" @Daily "), schedule("0 0 * * *"));
    assert!(schedule("@hourly").is_wildcard());
    assert!(!schedule("@daily").is_wildcard());
}

#[test]
fn wildcard_is_a_minute_or_hour_beginning_with_star() {
    assert!(schedule("* * * * *").is_wildcard());
    assert!(schedule("*/15 3 * * *").is_wildcard());
    assert!(schedule("0 * * * *").is_wildcard());
    assert!(schedule("30 */2 * * *").is_wildcard());
    assert!(!schedule("30 2 * * *").is_wildcard());
    assert!(!schedule("0 0 * * *").is_wildcard());
    // As in Vixie cron, only a leading `*` counts, not the values matched.
    assert!(!schedule("0-59 0-23 * * *").is_wildcard());
    assert!(!schedule("0,30 1-3 * * *").is_wildcard());
}

#[test]
fn refusals_name_the_field_and_the_text() {
    let cases = [
        ("", "expected 5 fields (minute hour day-of-month month day-of-week), got 0"),
        ("0 0 * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
        ("0 0 * * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 6"),
        ("61 * * * *", "minute: 61 is out of range 0-59"),
        ("99999999999 * * * *", "minute: 99999999999 is out of range 0-59"),
        ("0 24 * * *", "hour: 24 is out of range 0-23"),
        ("0 0 0 * *", "day of month: 0 is out of range 1-31"),
        ("0 0 32 * *", "day of month: 32 is out of range 1-31"),
        ("0 0 * 13 *", "month: 13 is out of range 1-12"),
        ("0 0 * 0 *", "month: 0 is out of range 1-12"),
        ("0 0 * * 8", "day of week: 8 is out of range 0-7"),
        ("5-1 * * * *", "minute: range 5-1 is reversed"),
        ("0 0 * * sat-sun", "day of week: range sat-sun is reversed"),
        ("*/0 * * * *", "minute: step 0 in \"*/0\" (a step is at least 1)"),
        ("0 1-5/0 * * *", "hour: step 0 in \"1-5/0\" (a step is at least 1)"),
        ("*/60 * * * *", "minute: step 60 is out of range 1-59"),
        ("*/ * * * *", "minute: missing step after \"/\" in \"*/\""),
        ("0 0 * * */mon", "day of week: step \"mon\" is not a number"),
        ("1,,2 * * * *", "minute: empty item in list \"1,,2\""),
        ("1, * * * *", "minute: empty item in list \"1,\""),
        ("0 ,3 * * *", "hour: empty item in list \",3\""),
        ("5- * * * *", "minute: missing value in \"5-\""),
        ("-5 * * * *", "minute: missing value in \"-5\""),
        ("1-2-3 * * * *", "minute: invalid value \"2-3\""),
        ("1x * * * *", "minute: invalid value \"1x\""),
        ("*-5 * * * *", "minute: invalid item \"*-5\" (\"*\" stands alone, as in \"*\" or \"*/5\")"),
        ("0 0 * * fri2", "day of week: unknown name \"fri2\""),
        ("0 0 * * monday", "day of week: unknown name \"monday\""),
        ("0 0 * foo *", "month: unknown name \"foo\""),
        ("0 mon * * *", "hour: \"mon\" is not a number"),
        ("jan 0 * * *", "minute: \"jan\" is not a number"),
        ("0 0 x * *", "day of month: \"x\" is not a number"),
        ("0 0 30 2 *", "day of month: \"30\" never occurs in month \"2\""),
        ("0 0 31 4,6 *", "day of month: \"31\" never occurs in month \"4,6\""),
        ("0 0 30,31 feb */2", "day of month: \"30,31\" never occurs in month \"feb\""),
        ("@reboot", "@reboot is not supported: a schedule needs times to run at, not a start-up"),
        (
            "@fortnightly",
            "unknown nickname \"@fortnightly\" (expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or \
             @hourly)",
        ),
        ("@daily 0", "@daily stands alone, got \"0\" after it"),
    ];
    for (expr, message) in cases {
        assert_eq!(refusal(expr), message, "{expr:?}");
    }
    // With day of week restricted, the day of week alone can match.
    assert_eq!(values(schedule("0 0 30 2 mon").months), [2]);
    assert!(Schedule::parse("0 0 29 2 *").is_ok());
}

#[test]
fn time_zone_names_come_from_the_bundled_database() {
    assert_eq!(time_zone("Europe/Paris").unwrap().iana_name(), Some("Europe/Paris"));
    assert!(time_zone("UTC").is_ok());
    assert_eq!(
        time_zone("Europe/Pariss").unwrap_err().to_string(),
        "time zone: unknown name \"Europe/Pariss\" (expected an IANA name such as Europe/Paris or UTC)"
    );
    assert!(time_zone("").is_err());
}

#[test]
fn day_fields_combine_with_or_when_both_are_restricted() {
    // The 13th or any Friday (April 2026: the 13th is a Monday).
    assert_eq!(
        runs("0 0 13 * 5", "UTC", "2026-04-01T00:00:00Z", 5),
        [
            "2026-04-03T00:00:00Z",
            "2026-04-10T00:00:00Z",
            "2026-04-13T00:00:00Z",
            "2026-04-17T00:00:00Z",
            "2026-04-24T00:00:00Z"
        ]
    );
    // Not "the first Monday": any of the 1st-7th, or any Monday.
    assert_eq!(
        runs("0 0 1-7 * 1", "UTC", "2026-03-31T12:00:00Z", 8)[6..],
        ["2026-04-07T00:00:00Z", "2026-04-13T00:00:00Z"]
    );
    // One field beginning with `*`: both must match (odd days that are Mondays).
    assert_eq!(
        runs("0 0 */2 * 1", "UTC", "2026-04-01T00:00:00Z", 4),
        ["2026-04-13T00:00:00Z", "2026-04-27T00:00:00Z", "2026-05-11T00:00:00Z", "2026-05-25T00:00:00Z"]
    );
    assert_eq!(runs("0 0 * * 1", "UTC", "2026-04-01T00:00:00Z", 2), ["2026-04-06T00:00:00Z", "2026-04-13T00:00:00Z"]);
}

#[test]
fn steps_run_through_the_day() {
    assert_eq!(
        runs("*/20 9-10 * * *", "UTC", "2026-05-01T09:30:00Z", 5),
        [
            "2026-05-01T09:40:00Z",
            "2026-05-01T10:00:00Z",
            "2026-05-01T10:20:00Z",
            "2026-05-01T10:40:00Z",
            "2026-05-02T09:00:00Z"
        ]
    );
    assert_eq!(
        runs("50/5 22/1 * * *", "UTC", "2026-05-01T12:00:00Z", 5),
        [
            "2026-05-01T22:50:00Z",
            "2026-05-01T22:55:00Z",
            "2026-05-01T23:50:00Z",
            "2026-05-01T23:55:00Z",
            "2026-05-02T22:50:00Z"
        ]
    );
}

#[test]
fn runs_are_strictly_after_and_at_whole_minutes() {
    assert_eq!(runs("* * * * *", "UTC", "2026-01-01T00:00:30.5Z", 2), ["2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"]);
    assert_eq!(runs("0 0 * * *", "UTC", "2026-01-01T00:00:00Z", 1), ["2026-01-02T00:00:00Z"]);
    assert_eq!(runs("0 0 * * *", "UTC", "2025-12-31T23:59:59.999Z", 1), ["2026-01-01T00:00:00Z"]);
}

#[test]
fn daily_follows_local_midnight() {
    assert_eq!(
        runs("@daily", "Europe/Paris", "2026-03-28T12:00:00Z", 2),
        ["2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"]
    );
    assert_eq!(runs("@daily", "UTC", "2026-03-28T12:00:00Z", 2), ["2026-03-29T00:00:00Z", "2026-03-30T00:00:00Z"]);
}

#[test]
fn month_ends_and_leap_days() {
    assert_eq!(
        runs("0 0 31 * *", "UTC", "2026-01-31T00:00:00Z", 6),
        [
            "2026-03-31T00:00:00Z",
            "2026-05-31T00:00:00Z",
            "2026-07-31T00:00:00Z",
            "2026-08-31T00:00:00Z",
            "2026-10-31T00:00:00Z",
            "2026-12-31T00:00:00Z"
        ]
    );
    assert_eq!(runs("0 0 29 2 *", "UTC", "2026-01-01T00:00:00Z", 2), ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]);
    // 2100 is not a leap year: eight years between leap days.
    assert_eq!(runs("0 0 29 2 *", "UTC", "2096-03-01T00:00:00Z", 1), ["2104-02-29T00:00:00Z"]);
}

#[test]
fn sunday_is_zero_and_seven() {
    for expr in ["0 12 * * 0", "0 12 * * 7", "0 12 * * sun"] {
        // 2026-03-04 is a Wednesday.
        assert_eq!(runs(expr, "UTC", "2026-03-04T00:00:00Z", 2), ["2026-03-08T12:00:00Z", "2026-03-15T12:00:00Z"]);
    }
}

// Daylight saving, 2026: Paris 03-29 02:00 CET -> 03:00 CEST and 10-25 03:00
// CEST -> 02:00 CET, both at 01:00 UTC; New York 03-08 02:00 EST -> 03:00 EDT
// (07:00 UTC) and 11-01 02:00 EDT -> 01:00 EST (06:00 UTC).

#[test]
fn fixed_time_in_a_gap_runs_once_at_the_change() {
    // 02:30 does not exist on the gap day: at 03:00 local, then 02:30 again.
    assert_eq!(
        runs("30 2 * * *", "Europe/Paris", "2026-03-28T12:00:00Z", 3),
        ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z"]
    );
    assert_eq!(
        runs("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 3),
        ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z", "2026-03-10T06:30:00Z"]
    );
    // Several skipped times collapse into the one run, as does 03:00 itself.
    assert_eq!(
        runs("0,15,30,45 2 * * *", "Europe/Paris", "2026-03-28T12:00:00Z", 2),
        ["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"]
    );
    assert_eq!(
        runs("0 2,3 * * *", "America/New_York", "2026-03-07T12:00:00Z", 3),
        ["2026-03-08T07:00:00Z", "2026-03-09T06:00:00Z", "2026-03-09T07:00:00Z"]
    );
    // Asked from inside the gap's instant: the change itself is past.
    assert_eq!(runs("30 2 * * *", "Europe/Paris", "2026-03-29T01:00:00Z", 1), ["2026-03-30T00:30:00Z"]);
    assert_eq!(runs("30 2 * * *", "Europe/Paris", "2026-03-29T00:59:59Z", 1), ["2026-03-29T01:00:00Z"]);
}

#[test]
fn wildcard_jobs_skip_the_gap() {
    assert_eq!(
        runs("*/30 * * * *", "Europe/Paris", "2026-03-28T23:59:00Z", 5),
        [
            "2026-03-29T00:00:00Z", // 01:00 CET
            "2026-03-29T00:30:00Z", // 01:30 CET
            "2026-03-29T01:00:00Z", // 03:00 CEST
            "2026-03-29T01:30:00Z",
            "2026-03-29T02:00:00Z"
        ]
    );
    assert_eq!(
        runs("*/30 * * * *", "America/New_York", "2026-03-08T05:59:00Z", 5),
        [
            "2026-03-08T06:00:00Z", // 01:00 EST
            "2026-03-08T06:30:00Z", // 01:30 EST
            "2026-03-08T07:00:00Z", // 03:00 EDT
            "2026-03-08T07:30:00Z",
            "2026-03-08T08:00:00Z"
        ]
    );
    // Minute beginning with `*`: a wildcard job, so nothing on the gap day.
    assert_eq!(
        runs("*/30 2 * * *", "Europe/Paris", "2026-03-28T12:00:00Z", 2),
        ["2026-03-30T00:00:00Z", "2026-03-30T00:30:00Z"]
    );
}

#[test]
fn fixed_time_in_a_fold_runs_once_at_the_first_pass() {
    // 02:30 CEST = 00:30 UTC; 02:30 CET (01:30 UTC) is skipped.
    assert_eq!(
        runs("30 2 * * *", "Europe/Paris", "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
    // 01:30 EDT = 05:30 UTC; 01:30 EST (06:30 UTC) is skipped.
    assert_eq!(
        runs("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
        ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
    );
    assert_eq!(
        runs("0 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
        ["2026-11-01T05:00:00Z", "2026-11-02T06:00:00Z"]
    );
    // Asked from inside the second pass: the repeated times are not run.
    assert_eq!(runs("30 2 * * *", "Europe/Paris", "2026-10-25T01:10:00Z", 1), ["2026-10-26T01:30:00Z"]);
    assert_eq!(runs("30 1 * * *", "America/New_York", "2026-11-01T06:10:00Z", 1), ["2026-11-02T06:30:00Z"]);
    // A time after the repeated interval runs as usual.
    assert_eq!(runs("30 2 * * *", "America/New_York", "2026-11-01T06:10:00Z", 1), ["2026-11-01T07:30:00Z"]);
}

#[test]
fn wildcard_jobs_run_in_both_passes_of_a_fold() {
    assert_eq!(
        runs("*/30 * * * *", "Europe/Paris", "2026-10-24T23:45:00Z", 5),
        [
            "2026-10-25T00:00:00Z", // 02:00 CEST
            "2026-10-25T00:30:00Z", // 02:30 CEST
            "2026-10-25T01:00:00Z", // 02:00 CET
            "2026-10-25T01:30:00Z", // 02:30 CET
            "2026-10-25T02:00:00Z"  // 03:00 CET
        ]
    );
    assert_eq!(
        runs("*/30 * * * *", "America/New_York", "2026-11-01T04:45:00Z", 5),
        [
            "2026-11-01T05:00:00Z", // 01:00 EDT
            "2026-11-01T05:30:00Z", // 01:30 EDT
            "2026-11-01T06:00:00Z", // 01:00 EST
            "2026-11-01T06:30:00Z", // 01:30 EST
            "2026-11-01T07:00:00Z"  // 02:00 EST
        ]
    );
    // Hour `*`: a wildcard job, so 01:00 runs twice.
    assert_eq!(
        runs("0 * * * *", "America/New_York", "2026-11-01T04:30:00Z", 3),
        ["2026-11-01T05:00:00Z", "2026-11-01T06:00:00Z", "2026-11-01T07:00:00Z"]
    );
}

#[test]
fn changes_of_three_hours_or_more_are_taken_as_they_are() {
    // Samoa skipped 2011-12-30 (-10:00 -> +14:00): a fixed-time job on the
    // skipped day does not run at the change.
    assert_eq!(runs("0 12 * * *", "Pacific/Apia", "2011-12-29T23:00:00Z", 1), ["2011-12-30T22:00:00Z"]);
}

#[test]
fn half_hour_changes_are_daylight_saving_changes() {
    // Lord Howe Island: 02:00 +10:30 -> 02:30 +11:00 on 2026-10-04.
    assert_eq!(
        runs("15 2 * * *", "Australia/Lord_Howe", "2026-10-03T12:00:00Z", 2),
        ["2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"]
    );
}

/// Randomized checks against minute-by-minute references.
mod random {
    use super::*;

    fn seed() -> u64 {
        let s = std::env::var("SYNCBRIDGE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(14)
        });
        eprintln!("seed {s} (SYNCBRIDGE_TEST_SEED={s} replays this run)");
        s
    }

    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }

        fn pick(&mut self, low: u32, high: u32) -> u32 {
            low + self.below(u64::from(high - low + 1)) as u32
        }
    }

    /// A field's range and names, for the generator (independent of the parser's).
    struct Spec {
        min: u32,
        max: u32,
        names: &'static [&'static str],
        names_from: u32,
    }

    const SPECS: [Spec; 5] = [
        Spec { min: 0, max: 59, names: &[], names_from: 0 },
        Spec { min: 0, max: 23, names: &[], names_from: 0 },
        Spec { min: 1, max: 31, names: &[], names_from: 0 },
        Spec {
            min: 1,
            max: 12,
            names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
            names_from: 1,
        },
        Spec { min: 0, max: 7, names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"], names_from: 0 },
    ];

    /// A random expression, with the sets each field should match and whether
    /// each begins with `*`.
    struct Generated {
        text: String,
        sets: [Vec<bool>; 5],
        stars: [bool; 5],
    }

    fn value_text(rng: &mut Lcg, spec: &Spec, v: u32) -> String {
        let name = v.checked_sub(spec.names_from).and_then(|i| spec.names.get(i as usize));
        match name {
            Some(name) if rng.chance(40) => {
                if rng.chance(50) {
                    name.to_uppercase()
                } else {
                    name.to_string()
                }
            }
            _ => v.to_string(),
        }
    }

    /// One field; `star` percent of the time a plain `*`; values drawn from
    /// `low..=high` (within the field) more often than not.
    fn field(rng: &mut Lcg, spec: &Spec, star: u64, low: u32, high: u32) -> (String, Vec<bool>) {
        let mut set = vec![false; spec.max as usize + 1];
        if rng.chance(star) {
            set[spec.min as usize..].fill(true);
            return ("*".into(), set);
        }
        let mut items = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let value = |rng: &mut Lcg| if rng.chance(70) { rng.pick(low, high) } else { rng.pick(spec.min, spec.max) };
            let step = |rng: &mut Lcg| rng.pick(1, spec.max.min(12));
            let (text, from, to, by) = match rng.below(6) {
                0 => {
                    let n = step(rng);
                    (format!("*/{n}"), spec.min, spec.max, n)
                }
                1 | 2 => {
                    let v = value(rng);
                    (value_text(rng, spec, v), v, v, 1)
                }
                3 => {
                    let (a, b) = (value(rng), value(rng));
                    let (a, b) = (a.min(b), a.max(b));
                    (format!("{}-{}", value_text(rng, spec, a), value_text(rng, spec, b)), a, b, 1)
                }
                4 => {
                    let (a, b, n) = (value(rng), value(rng), step(rng));
                    let (a, b) = (a.min(b), a.max(b));
                    (format!("{}-{}/{n}", value_text(rng, spec, a), value_text(rng, spec, b)), a, b, n)
                }
                _ => {
                    let (a, n) = (value(rng), step(rng));
                    (format!("{}/{n}", value_text(rng, spec, a)), a, spec.max, n)
                }
            };
            let mut v = from;
            while v <= to {
                set[v as usize] = true;
                v += by;
            }
            items.push(text);
        }
        (items.join(","), set)
    }

    /// A random expression; `hours` bias the hour field (towards a time change).
    fn generate(rng: &mut Lcg, hours: (u32, u32)) -> Generated {
        let (minute, minutes) = field(rng, &SPECS[0], 20, 0, 59);
        let (hour, hours) = field(rng, &SPECS[1], 25, hours.0, hours.1);
        let (dom, doms) = field(rng, &SPECS[2], 60, 1, 31);
        let (month, months) = field(rng, &SPECS[3], 75, 1, 12);
        let (dow, mut dows) = field(rng, &SPECS[4], 60, 0, 7);
        if dows[7] {
            dows[0] = true;
        }
        let texts = [minute, hour, dom, month, dow];
        let stars = [0, 1, 2, 3, 4].map(|i| texts[i].starts_with('*'));
        Generated { text: texts.join(" "), sets: [minutes, hours, doms, months, dows], stars }
    }

    impl Generated {
        fn matches(&self, dt: DateTime) -> bool {
            let [minutes, hours, doms, months, dows] = &self.sets;
            let dom = doms[dt.day() as usize];
            let dow = dows[dt.weekday().to_sunday_zero_offset() as usize];
            let day = if self.stars[2] || self.stars[4] { dom && dow } else { dom || dow };
            minutes[dt.minute() as usize] && hours[dt.hour() as usize] && months[dt.month() as usize] && day
        }

        fn wildcard(&self) -> bool {
            self.stars[0] || self.stars[1]
        }

        /// Whether parse must refuse it: day of week beginning with `*` and no
        /// day of month that occurs in the months given.
        fn impossible(&self) -> bool {
            let [_, _, doms, months, _] = &self.sets;
            self.stars[4] && !(1..=12).any(|m| months[m] && (1..=DAYS_IN_MONTH[m - 1] as usize).any(|d| doms[d]))
        }

        /// Parses the expression, or checks the refusal and gives `None`.
        fn schedule(&self) -> Option<Schedule> {
            match Schedule::parse(&self.text) {
                Ok(s) => {
                    assert!(!self.impossible(), "{:?} accepted", self.text);
                    assert_eq!(s.is_wildcard(), self.wildcard(), "{:?}", self.text);
                    Some(s)
                }
                Err(e) => {
                    assert!(self.impossible(), "{:?} refused: {e}", self.text);
                    None
                }
            }
        }
    }

    const MINUTE: SignedDuration = SignedDuration::from_mins(1);

    fn random_instant(rng: &mut Lcg, from: Timestamp, span_seconds: i64) -> Timestamp {
        let seconds = rng.below(span_seconds as u64) as i64;
        let nanos = if rng.chance(50) { 0 } else { rng.below(1_000_000_000) as i64 };
        from + SignedDuration::new(seconds, nanos as i32)
    }

    /// Compares `next_after` with `expected` (the reference's first run after
    /// `after`, if any by `until`).
    fn check(
        g: &Generated,
        s: &Schedule,
        zone: &TimeZone,
        after: Timestamp,
        until: Timestamp,
        expected: Option<Timestamp>,
    ) {
        let got = s.next_after(zone, after);
        match expected {
            Some(_) => assert_eq!(got, expected, "{:?} in {:?} after {after}", g.text, zone.iana_name()),
            None => assert!(
                got.is_none_or(|t| t > until),
                "{:?} in {:?} after {after}: got {got:?}, none by {until}",
                g.text,
                zone.iana_name()
            ),
        }
    }

    /// Days without a time change: every local minute occurs once, and the
    /// next run is the first minute whose local time matches.
    #[test]
    fn next_after_matches_a_minute_by_minute_search() {
        let mut rng = Lcg(seed());
        let window = SignedDuration::from_hours(24 * 4);
        for zone in [tz("UTC"), tz("Europe/Paris")] {
            let (mut compared, mut found) = (0, 0);
            while compared < 150 || found < 60 {
                let g = generate(&mut rng, (0, 23));
                let Some(s) = g.schedule() else { continue };
                let after = random_instant(&mut rng, at("2026-01-01T00:00:00Z"), 5 * 365 * 86400);
                let until = after + window;
                let changed = zone.preceding(after).next().is_some_and(|t| t.timestamp() > after - window);
                if changed || zone.following(after).next().is_some_and(|t| t.timestamp() <= until) {
                    continue;
                }
                let first = Timestamp::from_second(after.as_second().div_euclid(60) * 60).unwrap() + MINUTE;
                let expected = (0..window.as_mins())
                    .map(|i| first + MINUTE * i as i32)
                    .find(|&t| t <= until && g.matches(zone.to_datetime(t)));
                check(&g, &s, &zone, after, until, expected);
                compared += 1;
                found += usize::from(expected.is_some());
            }
        }
    }

    /// cron's own account of a time change, minute by minute as its daemon
    /// sees the clock: local time jumping forward by less than three hours
    /// runs the fixed-time jobs of the skipped minutes at once; local time
    /// going back by less than three hours keeps fixed-time jobs waiting until
    /// local time passes the latest it had reached.
    fn reference_runs(g: &Generated, zone: &TimeZone, from: Timestamp, until: Timestamp) -> Vec<Timestamp> {
        let limit = SignedDuration::from_hours(3);
        let fixed = !g.wildcard();
        let mut runs = Vec::new();
        let mut previous = zone.to_datetime(from - MINUTE);
        let mut latest = previous;
        let mut t = from;
        while t <= until {
            let local = zone.to_datetime(t);
            let jump = local.duration_since(previous) - MINUTE;
            let run = if !fixed || jump.abs() >= limit {
                latest = latest.max(local);
                if jump.abs() >= limit {
                    latest = local;
                }
                g.matches(local)
            } else if jump > SignedDuration::ZERO {
                let mut skipped = previous + MINUTE;
                let mut any = false;
                while skipped <= local {
                    any |= g.matches(skipped);
                    skipped += MINUTE;
                }
                latest = local;
                any
            } else if local > latest {
                latest = local;
                g.matches(local)
            } else {
                false
            };
            if run {
                runs.push(t);
            }
            previous = local;
            t += MINUTE;
        }
        runs
    }

    /// Around the daylight-saving changes of Paris and New York, with hours
    /// drawn near the change, against [`reference_runs`].
    #[test]
    fn next_after_follows_cron_across_time_changes() {
        let mut rng = Lcg(seed());
        for (name, hours) in [("Europe/Paris", (1, 3)), ("America/New_York", (0, 3))] {
            let zone = tz(name);
            let changes: Vec<Timestamp> = zone
                .following(at("2026-01-01T00:00:00Z"))
                .map(|t| t.timestamp())
                .take_while(|&t| t < at("2031-01-01T00:00:00Z"))
                .collect();
            assert_eq!(changes.len(), 10, "{name}");
            let (mut compared, mut found) = (0, 0);
            while compared < 300 || found < 100 {
                let g = generate(&mut rng, hours);
                let Some(s) = g.schedule() else { continue };
                let change = changes[rng.below(changes.len() as u64) as usize];
                let after = if rng.chance(70) {
                    random_instant(&mut rng, change - SignedDuration::from_hours(3), 6 * 3600)
                } else {
                    random_instant(&mut rng, change - SignedDuration::from_hours(30), 36 * 3600)
                };
                let until = after + SignedDuration::from_hours(24 * 3);
                let from = Timestamp::from_second(after.as_second().div_euclid(60) * 60).unwrap()
                    - SignedDuration::from_hours(24);
                let expected = reference_runs(&g, &zone, from, until).into_iter().find(|&t| t > after);
                check(&g, &s, &zone, after, until, expected);
                compared += 1;
                found += usize::from(expected.is_some());
            }
        }
    }
}
