//! Scheduled jobs: when a cron expression fires next, in an IANA time zone
//! (the evaluation, with cron(8)'s daylight-saving rules, is the
//! `syncbridge-cron` crate's; `sync.schedule` and `sync.run_jobs` call this).

use pgrx::prelude::*;

use crate::error::SyncError;

/// The first time after `after` (Unix seconds) that `cron` fires in
/// `time_zone`, in Unix seconds. Raises 22023 for an expression that does
/// not parse or never fires, and for an unknown time zone.
#[pg_extern(immutable, parallel_safe, strict)]
fn _cron_next_epoch(cron: &str, time_zone: &str, after: i64) -> i64 {
    next_epoch(cron, time_zone, after).unwrap_or_else(|e| e.raise())
}

fn next_epoch(cron: &str, time_zone: &str, after: i64) -> Result<i64, SyncError> {
    let schedule = syncbridge_cron::Schedule::parse(cron)
        .map_err(|e| SyncError::BadCron { expr: cron.to_owned(), reason: e.to_string() })?;
    let tz =
        syncbridge_cron::time_zone(time_zone).map_err(|_| SyncError::UnknownTimeZone { name: time_zone.to_owned() })?;
    let after = jiff::Timestamp::from_second(after).map_err(|e| SyncError::BadCron {
        expr: cron.to_owned(),
        reason: format!("the time to start from is out of range: {e}"),
    })?;
    schedule.next_after(&tz, after).map(|t| t.as_second()).ok_or_else(|| SyncError::BadCron {
        expr: cron.to_owned(),
        reason: "it never fires in the next five years".into(),
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn cron_next_is_read_in_the_time_zone() {
        // 02:30 every day in Paris: on the spring-forward night (2026-03-29,
        // 02:00 -> 03:00 local) it runs at the change, 03:00 CEST = 01:00 UTC.
        let t = Spi::get_one::<String>(
            "SELECT to_char(sync._cron_next('30 2 * * *', 'Europe/Paris', '2026-03-28 12:00Z') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(t, "2026-03-29 01:00");
    }

    #[pg_test(error = "invalid cron expression \"61 * * * *\"")]
    fn a_bad_cron_expression_is_refused() {
        Spi::run("SELECT sync._cron_next('61 * * * *', 'UTC', now())").unwrap();
    }
}
