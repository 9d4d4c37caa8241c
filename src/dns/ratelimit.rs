//! Per-client token buckets against floods. Loopback clients (local programs) are not limited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use parking_lot::Mutex;
use rustc_hash::FxBuildHasher;

const SHARDS: usize = 16;
/// Buckets kept per shard before idle ones are swept.
const SWEEP_AT: usize = 4096;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f32,
    last: Instant,
}

/// Allows `rate` queries per second per client with a burst of `2 × rate`.
pub struct RateLimiter {
    rate: f32,
    shards: Box<[Mutex<HashMap<IpAddr, Bucket, FxBuildHasher>>]>,
}

impl RateLimiter {
    /// `rate` = 0 turns limiting off.
    pub fn new(rate: u32) -> RateLimiter {
        RateLimiter {
            rate: rate as f32,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(FxBuildHasher)))
                .collect(),
        }
    }

    /// Takes one token for `ip` at `now`; false when the client is over its rate.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0.0 || ip.is_loopback() {
            return true;
        }
        use std::hash::BuildHasher;
        let i = FxBuildHasher.hash_one(ip) as usize % SHARDS;
        let mut m = self.shards[i].lock();
        let burst = self.rate * 2.0;
        if m.len() >= SWEEP_AT && !m.contains_key(&ip) {
            m.retain(|_, b| now.saturating_duration_since(b.last).as_secs_f32() < 2.0);
        }
        let b = m.entry(ip).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let dt = now.saturating_duration_since(b.last).as_secs_f32();
        b.tokens = (b.tokens + dt * self.rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn flood_is_cut_to_the_rate_and_recovers() {
        let r = RateLimiter::new(10);
        let ip: IpAddr = "100.96.0.2".parse().unwrap();
        let t = Instant::now();
        let passed = (0..100).filter(|_| r.allow(ip, t)).count();
        assert_eq!(passed, 20, "burst of twice the rate");
        assert!(r.allow(ip, t + Duration::from_millis(200)));
    }

    #[test]
    fn loopback_is_not_limited() {
        let r = RateLimiter::new(1);
        let t = Instant::now();
        assert!((0..100).all(|_| r.allow("127.0.0.1".parse().unwrap(), t)));
    }
}
