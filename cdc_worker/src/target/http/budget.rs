//! The request budget: a GCRA rate limiter (governor) over the API's cost
//! units, and an optional cap on write requests per second.

use std::num::NonZeroU32;
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

impl HttpClient {
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
        self.take(&self.budget.limiter, self.budget.burst, ru).await
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
