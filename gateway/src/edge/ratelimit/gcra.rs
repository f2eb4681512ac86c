//! GCRA (the generic cell rate algorithm): a policy's parameters, and the reference model of one decision.
//!
//! Production decides in Redis (`script.lua`); [`decide`] is the model that the script is property-tested
//! against on a real Redis (`tests/edge/gcra_script.rs`), and is itself checked here against a token bucket.
//!
//! A policy of `limit` per `period` with `burst` is a bucket of `limit + burst` requests refilled at one
//! request per `interval = period / limit`. GCRA keeps one number per key — the theoretical arrival time
//! (TAT) of the next request — instead of a count: a request at `now` is allowed when
//! `now >= TAT - tolerance` (with `tolerance = interval × (capacity - 1)`), and then moves TAT on by one
//! interval. Everything is in integer microseconds, so Redis (Lua doubles, exact below 2^53) and Rust agree.

use std::time::Duration;

use crate::config::Rate;

/// A policy's parameters in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    pub interval_us: u64,
    pub tolerance_us: u64,
}

impl Gcra {
    pub fn new(rate: Rate, period: Duration) -> Gcra {
        let limit = rate.limit.max(1);
        let interval_us = (period.as_micros() as u64 / limit).max(1);
        Gcra {
            interval_us,
            tolerance_us: interval_us * (limit + rate.burst - 1),
        }
    }

    /// Not a GCRA: a counter of at most `limit` requests (a tenant's monthly quota), decided in the same
    /// script call as the GCRA policies. The script tells it by `interval_us == 0`; its key is a full
    /// Redis key, not a policy counter's.
    pub fn counter(limit: u64) -> Gcra {
        Gcra {
            interval_us: 0,
            tolerance_us: limit,
        }
    }

    /// Whether this is a [`Gcra::counter`].
    pub fn is_counter(&self) -> bool {
        self.interval_us == 0
    }

    /// Requests allowed at once from an idle key.
    pub fn capacity(&self) -> u64 {
        self.tolerance_us / self.interval_us.max(1) + 1
    }
}

/// One decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The key's TAT after the decision (unchanged when refused).
    pub tat_us: u64,
    /// Requests still allowed right now after this one.
    pub remaining: u64,
    /// When refused: how long until one request is allowed.
    pub retry_after_us: u64,
    /// How long until the key is back to full capacity.
    pub reset_us: u64,
}

/// The model: decides a request at `now` against a stored TAT (`None`: an idle or expired key).
pub fn decide(g: Gcra, tat: Option<u64>, now: u64) -> Decision {
    let tat = tat.unwrap_or(now).max(now);
    if now + g.tolerance_us < tat {
        return Decision {
            allowed: false,
            tat_us: tat,
            remaining: 0,
            retry_after_us: tat - g.tolerance_us - now,
            reset_us: tat - now,
        };
    }
    let new_tat = tat + g.interval_us;
    Decision {
        allowed: true,
        tat_us: new_tat,
        remaining: (now + g.tolerance_us + g.interval_us - new_tat) / g.interval_us,
        retry_after_us: 0,
        reset_us: new_tat - now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference model: a token bucket of `capacity` tokens refilled continuously at one token per
    /// interval, kept exactly in "token-microseconds" (tokens × interval).
    struct Bucket {
        level: u64,
        last: u64,
        capacity: u64,
        interval: u64,
    }

    impl Bucket {
        fn take(&mut self, now: u64) -> (bool, u64) {
            let full = self.capacity * self.interval;
            self.level = (self.level + (now - self.last)).min(full);
            self.last = now;
            if self.level >= self.interval {
                self.level -= self.interval;
                (true, self.level / self.interval)
            } else {
                (false, 0)
            }
        }
    }

    proptest! {
        #[test]
        fn gcra_matches_a_token_bucket(
            limit in 1u64..500,
            burst in 0u64..500,
            period_ms in 1u64..5_000,
            gaps in proptest::collection::vec(0u64..50_000, 1..300),
        ) {
            let g = Gcra::new(Rate { limit, burst }, Duration::from_millis(period_ms));
            prop_assert_eq!(g.capacity(), limit + burst);
            let mut bucket = Bucket {
                level: g.capacity() * g.interval_us,
                last: 0,
                capacity: g.capacity(),
                interval: g.interval_us,
            };
            let mut tat = None;
            let mut now = 0u64;
            for gap in gaps {
                now += gap;
                let d = decide(g, tat, now);
                let (allowed, remaining) = bucket.take(now);
                prop_assert_eq!(d.allowed, allowed, "at {}", now);
                prop_assert_eq!(d.remaining, remaining, "at {}", now);
                // Back to full capacity once the bucket's deficit has refilled.
                prop_assert_eq!(d.reset_us, bucket.capacity * bucket.interval - bucket.level, "at {}", now);
                if d.allowed {
                    tat = Some(d.tat_us);
                } else {
                    // Exactly when the retry is due, a request passes.
                    prop_assert!(decide(g, tat, now + d.retry_after_us).allowed);
                    prop_assert!(d.retry_after_us == 0 || !decide(g, tat, now + d.retry_after_us - 1).allowed);
                }
            }
        }
    }

    #[test]
    fn capacity_then_refill() {
        let g = Gcra::new(
            Rate {
                limit: 10,
                burst: 5,
            },
            Duration::from_secs(1),
        );
        let mut tat = None;
        for i in 0..15 {
            let d = decide(g, tat, 0);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 14 - i);
            tat = Some(d.tat_us);
        }
        let d = decide(g, tat, 0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_us, 100_000, "one interval");
        assert!(decide(g, tat, 100_000).allowed);
    }

    /// A quota counter is told from a policy by its zero interval alone (the script branches on it):
    /// no policy, however fast, is read as one.
    #[test]
    fn only_a_counter_is_a_counter() {
        assert!(Gcra::counter(1_000).is_counter());
        assert!(Gcra::counter(0).is_counter());
        let fastest = Gcra::new(
            Rate {
                limit: u64::MAX,
                burst: 0,
            },
            Duration::from_micros(1),
        );
        assert_eq!(fastest.interval_us, 1);
        assert!(!fastest.is_counter());
        assert!(!Gcra::new(Rate { limit: 5, burst: 0 }, Duration::from_secs(1)).is_counter());
    }
}
