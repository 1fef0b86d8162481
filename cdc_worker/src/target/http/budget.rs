//! The request budget: a GCRA rate limiter (governor) over the API's cost
//! units, an optional cap on write requests per second, and the target's
//! budget shared by every exporter of every worker ([`BudgetSource`]:
//! `sync.budget_take` in PostgreSQL).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::retry::stop_signalled;
use super::{Failure, HttpClient};
use crate::metrics;

/// What a target may spend.
pub struct Budget {
    /// The units a minute allowed (the metrics show it).
    pub(crate) per_min: u32,
    pub(crate) limiter: DefaultDirectRateLimiter,
    pub(crate) burst: u32,
    /// Paces write requests at `writes_per_second` (with a burst of at most
    /// `max_burst`, or one second's writes when fewer); None when unset.
    pub(crate) writes: Option<(DefaultDirectRateLimiter, u32)>,
}

impl Budget {
    /// `per_min` units a minute with a burst of `burst`, paced at what the
    /// burst leaves (GCRA admits up to burst + rate x 60 s in any minute, and
    /// an API counting a sliding minute must never see more than `per_min`);
    /// writes capped at `writes_per_second` when given.
    pub fn new(per_min: u32, burst: u32, writes_per_second: Option<f64>, max_burst: u32) -> Self {
        let allowed = per_min;
        let burst = burst.min(per_min / 2).max(1);
        let rate = per_min.saturating_sub(burst).max(1);
        let quota = Quota::per_minute(NonZeroU32::new(rate).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        let writes = writes_per_second.map(|w| {
            let w = w.clamp(0.01, 10_000.0);
            let burst = (w.floor() as u32).clamp(1, max_burst.max(1));
            let quota = Quota::with_period(Duration::from_secs_f64(1.0 / w))
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
            (RateLimiter::direct(quota), burst)
        });
        Self { per_min: allowed, limiter: RateLimiter::direct(quota), burst, writes }
    }
}

/// Where a target's budget is shared between the processes spending it
/// (the worker's: `sync.budget_take`, one bucket per target in PostgreSQL).
pub trait BudgetSource: Send + Sync {
    /// Takes `need` units of `target`'s budget and up to `extra` more (a
    /// slice for the next requests): `(granted, wait_seconds)`, granted 0
    /// (ask again after `wait_seconds`) or at least `need`.
    fn take<'a>(
        &'a self,
        target: &'a str,
        need: f64,
        extra: f64,
    ) -> crate::target::BoxFuture<'a, Result<(f64, f64), String>>;
}

/// A target's share of its budget: units granted and not yet spent, taken
/// a slice at a time.
pub(crate) struct Shared {
    source: Arc<dyn BudgetSource>,
    /// Granted and not yet spent (the lanes of the process share it).
    allowance: tokio::sync::Mutex<f64>,
    /// What is asked for beyond the need: half a second of the budget, so
    /// that a busy exporter asks about twice a second, and a worker that
    /// dies takes at most that much with it.
    slice: f64,
    warned: AtomicBool,
}

/// The longest wait between two asks for the shared budget.
const SHARED_WAIT_MAX: Duration = Duration::from_secs(5);

impl HttpClient {
    /// From now on, every request is also paid from `source`, the budget
    /// every exporter of the target shares (at most once; later calls are
    /// ignored).
    pub fn share_budget(&self, source: Arc<dyn BudgetSource>) {
        let slice = f64::from(self.budget.per_min) / 120.0;
        let _ = self.shared.set(Shared {
            source,
            allowance: tokio::sync::Mutex::new(0.0),
            slice,
            warned: AtomicBool::new(false),
        });
    }

    /// Pays `units` from the shared budget: from what was granted, else
    /// asks for more (waiting as the bucket says). When the budget cannot be
    /// read (the database is away), this process paces by its own budget.
    async fn take_shared(&self, shared: &Shared, units: u32) -> Result<(), Failure> {
        let cost = f64::from(units);
        if cost <= 0.0 {
            return Ok(());
        }
        let mut allowance = shared.allowance.lock().await;
        loop {
            if *allowance >= cost - 1e-9 {
                *allowance = (*allowance - cost).max(0.0);
                return Ok(());
            }
            let need = cost - *allowance;
            match shared.source.take(&self.name, need, shared.slice).await {
                Ok((granted, wait)) => {
                    *allowance += granted.max(0.0);
                    if *allowance >= cost - 1e-9 {
                        continue;
                    }
                    let wait = Duration::from_secs_f64(if wait.is_finite() { wait.clamp(0.01, 5.0) } else { 1.0 })
                        .min(SHARED_WAIT_MAX);
                    if !self.sleep_or_stop(tokio::time::Instant::now() + wait).await {
                        return Err(self.stopping());
                    }
                }
                Err(e) => {
                    metrics::BUDGET_SHARED_ERRORS.inc(&[&self.name]);
                    if !shared.warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(target = %self.name, error = %e,
                            "the target's shared budget cannot be read: pacing by this process's own budget until it can");
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Waits out a pause, the RU budget and (for `writes` write requests)
    /// the `writes_per_second` cap; Err when the worker stops meanwhile.
    /// The units taken and the time waited show in the metrics.
    pub(crate) async fn wait_turn(&self, ru: u32, writes: u32) -> Result<(), Failure> {
        let since = std::time::Instant::now();
        let turn = self.turn(ru, writes).await;
        metrics::BUDGET_WAIT.add(&[&self.name], since.elapsed().as_secs_f64());
        if turn.is_ok() {
            metrics::BUDGET_SPENT.add(&[&self.name], f64::from(ru));
        }
        turn
    }

    async fn turn(&self, ru: u32, writes: u32) -> Result<(), Failure> {
        let until = *self.pause_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = until {
            if !self.sleep_or_stop(until.into()).await {
                return Err(self.stopping());
            }
        }
        if let Some((limiter, burst)) = self.budget.writes.as_ref().filter(|_| writes > 0) {
            self.take(limiter, *burst, writes).await?;
        }
        self.take(&self.budget.limiter, self.budget.burst, ru).await?;
        if let Some(shared) = self.shared.get() {
            self.take_shared(shared, ru).await?;
        }
        Ok(())
    }

    /// Takes `n` cells of a limiter whose burst is `burst`, a burst at a time.
    async fn take(&self, limiter: &DefaultDirectRateLimiter, burst: u32, n: u32) -> Result<(), Failure> {
        let mut left = n;
        while left > 0 {
            let n = NonZeroU32::new(left.min(burst)).unwrap_or(NonZeroU32::MIN);
            // n <= burst: never InsufficientCapacity.
            let ready = limiter.until_n_ready(n);
            match self.shutdown.clone() {
                None => {
                    let _ = ready.await;
                }
                Some(mut rx) => {
                    tokio::select! {
                        _ = ready => {}
                        true = stop_signalled(&mut rx) => return Err(self.stopping()),
                    }
                }
            }
            left -= n.get();
        }
        Ok(())
    }
}
