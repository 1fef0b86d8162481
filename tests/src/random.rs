//! Seeded randomness for the randomized tests: every choice follows from a
//! seed, printed so that a failure replays.

/// A seed for a randomized test: `SYNCBRIDGE_TEST_SEED`, or the clock's.
/// Printed with the way to replay it.
pub fn seed() -> u64 {
    let s = std::env::var("SYNCBRIDGE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(14)
    });
    eprintln!("seed {s} (SYNCBRIDGE_TEST_SEED={s} replays this run)");
    s
}

/// A small LCG: the test's choices follow from the seed alone.
#[derive(Debug, Clone)]
pub struct Lcg(pub u64);

impl Lcg {
    /// The next number (31 bits of spread).
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
