//! The size of the next micro-batch, adapted to how long batches take.

use std::time::Duration;

/// How many records the next micro-batch may take. Under a backlog (a
/// batch came back full) the size doubles while batches take less than half
/// the target time; it halves when one takes longer than the target.
#[derive(Debug, Clone, Copy)]
pub struct BatchSize {
    pub limit: usize,
    max: usize,
    target: Duration,
}

impl BatchSize {
    /// The size a worker starts with, and the least it goes down to.
    const START: usize = 1_000;
    pub const FLOOR: usize = 100;

    pub fn new(max: usize, target: Duration) -> Self {
        BatchSize {
            limit: Self::START.min(max).max(1),
            max: max.max(1),
            target,
        }
    }

    pub fn observe(&mut self, taken: usize, elapsed: Duration) {
        if elapsed > self.target {
            self.limit = (self.limit / 2).max(Self::FLOOR.min(self.max));
        } else if taken >= self.limit && elapsed < self.target / 2 {
            self.limit = self.limit.saturating_mul(2).min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BatchSize;
    use std::time::Duration;

    #[test]
    fn batches_grow_under_a_backlog_and_shrink_when_slow() {
        let ms = Duration::from_millis;
        let mut size = BatchSize::new(50_000, ms(250));
        assert_eq!(size.limit, 1_000);
        // Full and fast: doubles up to the maximum.
        for expected in [2_000, 4_000, 8_000, 16_000, 32_000, 50_000, 50_000] {
            size.observe(size.limit, ms(10));
            assert_eq!(size.limit, expected);
        }
        // Not full (no backlog): stays.
        size.observe(10, ms(1));
        assert_eq!(size.limit, 50_000);
        // Between half and the whole target: stays.
        size.observe(50_000, ms(200));
        assert_eq!(size.limit, 50_000);
        // Too slow: halves, down to the floor.
        for _ in 0..20 {
            size.observe(size.limit, ms(900));
        }
        assert_eq!(size.limit, BatchSize::FLOOR);
        // A small max_batch is kept to.
        let mut small = BatchSize::new(50, ms(250));
        assert_eq!(small.limit, 50);
        small.observe(50, ms(1));
        assert_eq!(small.limit, 50);
        small.observe(50, ms(900));
        assert_eq!(small.limit, 50);
    }
}
