//! Per-client-IP token buckets for the API routes (`SWITCHBOARD_RATE_LIMIT_PER_MIN`).
//!
//! A bucket holds up to one minute's allowance and refills continuously, so a client can burst
//! up to the limit and then sustain limit/60 requests a second. Buckets are sharded by IP so
//! concurrent requests from different clients rarely touch the same lock.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::Instant;

use parking_lot::Mutex;

const SHARDS: usize = 16;
/// A shard this large is swept of full (idle) buckets.
const SWEEP_AT: usize = 4096;

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// See the module docs. `per_min == 0` turns limiting off.
pub struct RateLimiter {
    per_min: u32,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
}

impl RateLimiter {
    /// A limiter allowing `per_min` requests a minute per IP.
    pub fn new(per_min: u32) -> Self {
        Self {
            per_min,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes one token for `ip`, or says how many seconds until one is available.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        if self.per_min == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_min);
        let per_sec = capacity / 60.0;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        ip.hash(&mut hasher);
        let mut shard = self.shards[hasher.finish() as usize % SHARDS].lock();
        if shard.len() >= SWEEP_AT {
            shard.retain(|_, b| {
                b.tokens + now.duration_since(b.last).as_secs_f64() * per_sec < capacity
            });
        }
        let bucket = shard.entry(ip).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let refill = now.saturating_duration_since(bucket.last).as_secs_f64() * per_sec;
        bucket.tokens = (bucket.tokens + refill).min(capacity);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_to_the_limit_then_refills() {
        let rl = RateLimiter::new(60);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(rl.check_at(ip, t0).is_ok());
        }
        assert_eq!(rl.check_at(ip, t0), Err(1));
        assert!(rl.check_at(ip, t0 + Duration::from_millis(1100)).is_ok());
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(rl.check_at(other, t0).is_ok(), "buckets are per IP");
    }

    #[test]
    fn zero_is_off() {
        let rl = RateLimiter::new(0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..1000 {
            assert!(rl.check(ip).is_ok());
        }
    }
}
