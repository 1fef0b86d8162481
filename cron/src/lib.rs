//! Five-field cron expressions, evaluated in an IANA time zone.
//!
//! [`Schedule::parse`] reads `minute hour day-of-month month day-of-week` (or a
//! nickname such as `@daily`) with the syntax of Vixie cron and cronie;
//! [`Schedule::next_after`] gives the next run as a [`Timestamp`], following
//! their daylight-saving rule. [`time_zone`] looks a zone up in the tz
//! database bundled with jiff.
//!
//! Errors are short sentences naming the field and the offending text, fit
//! for the DETAIL of an SQL error.

use std::fmt;

use jiff::civil::{Date, DateTime};
use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};

#[cfg(test)]
mod tests;

/// How far [`Schedule::next_after`] looks ahead: eight years, so that a leap
/// day is found even across 2100, which is not a leap year.
const HORIZON: SignedDuration = SignedDuration::from_hours(24 * (8 * 365 + 2));

/// Local time changes shorter than this get cron's daylight-saving handling;
/// longer ones are clock or zone corrections, taken as they are.
const DST_CHANGE_LIMIT_SECONDS: i32 = 3 * 3600;

/// Days in each month of a leap year: which days of the month can ever occur.
const DAYS_IN_MONTH: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// A parsed cron schedule.
///
/// Each field is the set of values it matches (bit `v` for value `v`); the
/// `*_star` flags record a field that begins with `*`, as Vixie cron's
/// `MIN_STAR`, `HR_STAR`, `DOM_STAR` and `DOW_STAR` do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    /// Sunday is bit 0 (a `7` in the expression is folded onto it).
    days_of_week: u64,
    minute_star: bool,
    hour_star: bool,
    day_of_month_star: bool,
    day_of_week_star: bool,
}

/// Why a cron expression or a time zone name was refused: one line naming the
/// field (if any) and the offending text, e.g. `minute: 61 is out of range 0-59`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// The time zone named `name` (an IANA name such as `Europe/Paris` or `UTC`)
/// from the tz database bundled with jiff.
pub fn time_zone(name: &str) -> Result<TimeZone, ParseError> {
    jiff::tz::db().get(name).map_err(|_| {
        ParseError(format!("time zone: unknown name {name:?} (expected an IANA name such as Europe/Paris or UTC)"))
    })
}

/// One of the five fields: its name in messages, its range, its names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for `names_from`, `names_from + 1`, ... (three letters each).
    names: &'static [&'static str],
    names_from: u32,
}

const MINUTE: Field = Field { name: "minute", min: 0, max: 59, names: &[], names_from: 0 };
const HOUR: Field = Field { name: "hour", min: 0, max: 23, names: &[], names_from: 0 };
const DAY_OF_MONTH: Field = Field { name: "day of month", min: 1, max: 31, names: &[], names_from: 0 };
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    names_from: 1,
};
const DAY_OF_WEEK: Field = Field {
    name: "day of week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    names_from: 0,
};

impl Field {
    fn error(&self, message: String) -> ParseError {
        ParseError(format!("{}: {message}", self.name))
    }

    /// The values `text` matches, as bits, and whether it begins with `*`.
    fn parse(&self, text: &str) -> Result<(u64, bool), ParseError> {
        let mut bits = 0u64;
        for item in text.split(',') {
            if item.is_empty() {
                return Err(self.error(format!("empty item in list {text:?}")));
            }
            let (low, high, step) = self.item(item)?;
            let mut v = low;
            while v <= high {
                bits |= 1 << v;
                v += step;
            }
        }
        Ok((bits, text.starts_with('*')))
    }

    /// One list item: `*`, `v`, `a-b`, each optionally `/step` (`v/step` is
    /// `v-max/step`, as cronie reads it). Returns (low, high, step).
    fn item(&self, item: &str) -> Result<(u32, u32, u32), ParseError> {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(self.step(step, item)?)),
            None => (item, None),
        };
        let (low, high) = if range == "*" {
            (self.min, self.max)
        } else if range.contains('*') {
            return Err(self.error(format!("invalid item {item:?} (\"*\" stands alone, as in \"*\" or \"*/5\")")));
        } else if let Some((a, b)) = range.split_once('-') {
            let (low, high) = (self.value(a, item)?, self.value(b, item)?);
            if low > high {
                return Err(self.error(format!("range {range} is reversed")));
            }
            (low, high)
        } else {
            let v = self.value(range, item)?;
            (v, if step.is_some() { self.max } else { v })
        };
        Ok((low, high, step.unwrap_or(1)))
    }

    /// A number in range, or (for month and day of week) a name.
    fn value(&self, text: &str, item: &str) -> Result<u32, ParseError> {
        if text.is_empty() {
            return Err(self.error(format!("missing value in {item:?}")));
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u32>() {
                Ok(v) if (self.min..=self.max).contains(&v) => Ok(v),
                _ => Err(self.error(format!("{text} is out of range {}-{}", self.min, self.max))),
            };
        }
        if !text.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(self.error(format!("invalid value {text:?}")));
        }
        if self.names.is_empty() {
            return Err(self.error(format!("{text:?} is not a number")));
        }
        match self.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
            Some(i) => Ok(self.names_from + i as u32),
            None => Err(self.error(format!("unknown name {text:?}"))),
        }
    }

    /// The step after a `/`: a number from 1 to the field's maximum.
    fn step(&self, text: &str, item: &str) -> Result<u32, ParseError> {
        if text.is_empty() {
            return Err(self.error(format!("missing step after \"/\" in {item:?}")));
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.error(format!("step {text:?} is not a number")));
        }
        match text.parse::<u32>() {
            Ok(0) => Err(self.error(format!("step 0 in {item:?} (a step is at least 1)"))),
            Ok(s) if s <= self.max => Ok(s),
            _ => Err(self.error(format!("step {text} is out of range 1-{}", self.max))),
        }
    }
}

/// The nicknames and the five fields each stands for.
const NICKNAMES: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

impl Schedule {
    /// Parses a cron expression: five fields separated by spaces or tabs, or
    /// one nickname (`@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
    /// `@midnight`, `@hourly`).
    ///
    /// Fields: minute 0-59, hour 0-23, day of month 1-31, month 1-12 or
    /// `jan`-`dec`, day of week 0-7 (0 and 7 are Sunday) or `sun`-`sat`; names
    /// are case-insensitive. Each field is a comma list of `*`, `v`, `a-b`,
    /// each optionally followed by `/step`; `v/step` means `v-max/step`.
    ///
    /// When both day of month and day of week are restricted (neither begins
    /// with `*`), a day matches if either does; otherwise it must match both.
    ///
    /// Refuses values out of range, reversed ranges, step 0, empty list items,
    /// unknown names, names outside month and day of week, `@reboot`, and a
    /// day of month that never occurs in the months given when day of week
    /// begins with `*` (e.g. `0 0 30 2 *`).
    pub fn parse(expr: &str) -> Result<Schedule, ParseError> {
        let fields: Vec<&str> = expr.trim().split([' ', '\t']).filter(|f| !f.is_empty()).collect();
        if let Some(nickname) = fields.first().filter(|f| f.starts_with('@')) {
            if fields.len() > 1 {
                return Err(ParseError(format!("{nickname} stands alone, got {:?} after it", fields[1..].join(" "))));
            }
            if nickname.eq_ignore_ascii_case("@reboot") {
                return Err(ParseError(
                    "@reboot is not supported: a schedule needs times to run at, not a start-up".into(),
                ));
            }
            return match NICKNAMES.iter().find(|(name, _)| name.eq_ignore_ascii_case(nickname)) {
                Some((_, fields)) => Schedule::parse(fields),
                None => Err(ParseError(format!(
                    "unknown nickname {nickname:?} (expected @yearly, @annually, @monthly, @weekly, @daily, \
                     @midnight or @hourly)"
                ))),
            };
        }
        let [minute, hour, day_of_month, month, day_of_week] = fields[..] else {
            return Err(ParseError(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), got {}",
                fields.len()
            )));
        };
        let (minutes, minute_star) = MINUTE.parse(minute)?;
        let (hours, hour_star) = HOUR.parse(hour)?;
        let (days_of_month, day_of_month_star) = DAY_OF_MONTH.parse(day_of_month)?;
        let (months, _) = MONTH.parse(month)?;
        let (mut days_of_week, day_of_week_star) = DAY_OF_WEEK.parse(day_of_week)?;
        if days_of_week & 1 << 7 != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1;
        }
        if day_of_week_star {
            // Days must then match the day of month: some must exist.
            let possible = (1..=12u32).any(|m| {
                months & 1 << m != 0 && days_of_month & ((1u64 << (DAYS_IN_MONTH[m as usize - 1] + 1)) - 1) != 0
            });
            if !possible {
                return Err(DAY_OF_MONTH.error(format!("{day_of_month:?} never occurs in month {month:?}")));
            }
        }
        Ok(Schedule {
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            minute_star,
            hour_star,
            day_of_month_star,
            day_of_week_star,
        })
    }

    /// Whether this is a "wildcard" job in cron(8)'s sense: its minute or its
    /// hour field begins with `*` (`*/15` counts). Other jobs are
    /// "fixed-time" jobs. The two differ across daylight-saving changes: see
    /// [`Schedule::next_after`].
    pub fn is_wildcard(&self) -> bool {
        self.minute_star || self.hour_star
    }

    /// The first run strictly after `after`, at a whole local minute, looking
    /// at most eight years ahead (`None` if there is none by then, which
    /// [`Schedule::parse`] prevents for all but rare day-of-week and leap-day
    /// combinations).
    ///
    /// Local time changes follow cron(8) of Vixie cron and cronie ("Daylight
    /// Saving Time and other time changes"): changes of less than three hours
    /// are handled specially for fixed-time jobs (see
    /// [`Schedule::is_wildcard`]); wildcard jobs are scheduled normally, on the
    /// local time as it is; longer changes are corrections, and every job
    /// simply follows the new local time.
    /// - Time adjusted forward (a gap, e.g. 02:00 → 03:00): the fixed-time runs
    ///   that fell in the skipped interval run immediately, once, at the
    ///   change (the gap's first instant after it, e.g. 03:00). Wildcard jobs
    ///   have no runs in the gap.
    /// - Time adjusted backward (a fold, e.g. 03:00 → 02:00): running a
    ///   fixed-time job twice is avoided; it runs at the first pass (the
    ///   earlier instant) only. Wildcard jobs run in both passes.
    pub fn next_after(&self, tz: &TimeZone, after: Timestamp) -> Option<Timestamp> {
        let horizon = after.checked_add(HORIZON).unwrap_or(Timestamp::MAX);
        let fixed = !self.is_wildcard();
        // The search moves through spans of constant offset, from one
        // transition to the next; within each, local time is plain.
        let mut start = after.checked_add(SignedDuration::from_nanos(1)).ok()?;
        let mut offset = tz.to_offset(after);
        // In the second pass of a fold, fixed-time jobs wait for this local
        // time (the end of the repeated interval).
        let mut not_before = None;
        if fixed {
            if let Some(t) = tz.preceding(start).next() {
                let before = tz.to_offset(t.timestamp().checked_sub(SignedDuration::from_nanos(1)).ok()?);
                if is_dst_change(before, t.offset()) && t.offset() < before {
                    not_before = Some(before.to_datetime(t.timestamp()));
                }
            }
        }
        let mut transitions = tz.following(after);
        loop {
            let transition = transitions.next().filter(|t| t.timestamp() < horizon);
            let end = transition.as_ref().map_or(horizon, |t| t.timestamp());
            let from = ceil_minute(offset.to_datetime(start))?;
            let from = not_before.map_or(from, |n: DateTime| n.max(from));
            if let Some(dt) = self.next_match(from, offset.to_datetime(end)) {
                return offset.to_timestamp(dt).ok();
            }
            let t = transition?;
            let new_offset = t.offset();
            not_before = None;
            if fixed && is_dst_change(offset, new_offset) {
                if new_offset > offset {
                    // A gap: local times from the change in the old offset
                    // up to the change in the new one never occur.
                    let skipped_from = ceil_minute(offset.to_datetime(t.timestamp()))?;
                    if self.next_match(skipped_from, new_offset.to_datetime(t.timestamp())).is_some() {
                        return Some(t.timestamp());
                    }
                } else {
                    // A fold: local times from the change in the new offset
                    // up to the change in the old one occur a second time.
                    not_before = Some(offset.to_datetime(t.timestamp()));
                }
            }
            offset = new_offset;
            start = t.timestamp();
        }
    }

    /// The first local time in `from..until` (`from` at a whole minute) that
    /// the schedule matches, walking months, days, hours and minutes by their
    /// sets.
    fn next_match(&self, from: DateTime, until: DateTime) -> Option<DateTime> {
        let mut date = from.date();
        let mut first = Some((from.hour() as u32, from.minute() as u32));
        while date <= until.date() {
            if self.months & 1 << date.month() == 0 {
                date = date.last_of_month().tomorrow().ok()?;
                first = None;
                continue;
            }
            if self.day_matches(date) {
                let (hour, minute) = first.unwrap_or((0, 0));
                if let Some((h, m)) = self.time_at_or_after(hour, minute) {
                    let dt = date.at(h as i8, m as i8, 0, 0);
                    return (dt < until).then_some(dt);
                }
            }
            date = date.tomorrow().ok()?;
            first = None;
        }
        None
    }

    /// Cron's day rule: both day fields restricted → either matches;
    /// otherwise both must (a field beginning with `*` usually matches all).
    fn day_matches(&self, date: Date) -> bool {
        let dom = self.days_of_month & 1 << date.day() != 0;
        let dow = self.days_of_week & 1 << date.weekday().to_sunday_zero_offset() != 0;
        if self.day_of_month_star || self.day_of_week_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first (hour, minute) of the schedule at or after `hour:minute`
    /// within a day.
    fn time_at_or_after(&self, hour: u32, minute: u32) -> Option<(u32, u32)> {
        let mut h = next_bit(self.hours, hour)?;
        loop {
            let from = if h == hour { minute } else { 0 };
            if let Some(m) = next_bit(self.minutes, from) {
                return Some((h, m));
            }
            h = next_bit(self.hours, h + 1)?;
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = ParseError;

    /// As [`Schedule::parse`].
    fn from_str(expr: &str) -> Result<Schedule, ParseError> {
        Schedule::parse(expr)
    }
}

/// Whether a change from offset `before` to `after` gets cron's daylight-saving
/// handling: a change of less than three hours.
fn is_dst_change(before: Offset, after: Offset) -> bool {
    let shift = (after.seconds() - before.seconds()).abs();
    shift > 0 && shift < DST_CHANGE_LIMIT_SECONDS
}

/// The lowest set bit of `bits` at or above `from`.
fn next_bit(bits: u64, from: u32) -> Option<u32> {
    let rest = bits.checked_shr(from)?;
    (rest != 0).then(|| from + rest.trailing_zeros())
}

/// `dt` rounded up to a whole minute.
fn ceil_minute(dt: DateTime) -> Option<DateTime> {
    if dt.second() == 0 && dt.subsec_nanosecond() == 0 {
        return Some(dt);
    }
    dt.date().at(dt.hour(), dt.minute(), 0, 0).checked_add(SignedDuration::from_mins(1)).ok()
}
