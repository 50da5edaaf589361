//! Per-client limits keyed by IP: the request rate of the API routes
//! (`SWITCHBOARD_RATE_LIMIT_PER_MIN`, token buckets) and the throttle on credential guessing
//! (10 failed checks a minute, SPEC §8 "Guessing is throttled").
//!
//! Clients are keyed by [`client_key`]: an IPv4 address as it is, an IPv6 address by its /64
//! (one subscriber usually holds a whole /64, so keying per /128 would give a single client
//! 2^64 buckets). State is sharded by key so concurrent requests from different clients rarely
//! touch the same lock, and stale entries are swept by a timer ([`spawn_sweeper`]), never by the
//! request path.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const SHARDS: usize = 16;
/// How often the sweeper drops idle buckets and expired failure windows.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The key a client is limited by: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// A map sharded by client key (one `parking_lot` mutex per shard).
struct Sharded<V> {
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<HashMap<IpAddr, V>>>,
}

impl<V> Sharded<V> {
    fn new() -> Self {
        Self {
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<HashMap<IpAddr, V>> {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        &self.shards[std::hash::Hasher::finish(&h) as usize % SHARDS]
    }

    fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        for shard in &self.shards {
            shard.lock().retain(|_, v| keep(v));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets of the API routes. See the module docs. `per_min == 0` turns limiting off.
pub struct RateLimiter {
    per_min: u32,
    buckets: Sharded<Bucket>,
}

impl RateLimiter {
    /// A limiter allowing `per_min` requests a minute per client.
    pub fn new(per_min: u32) -> Self {
        Self {
            per_min,
            buckets: Sharded::new(),
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
        let key = client_key(ip);
        let mut shard = self.buckets.shard(&key).lock();
        let bucket = shard.entry(key).or_insert(Bucket {
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

    /// Drops buckets that have refilled completely: such a client is indistinguishable from a
    /// new one.
    fn sweep_at(&self, now: Instant) {
        if self.per_min == 0 {
            return;
        }
        let capacity = f64::from(self.per_min);
        let per_sec = capacity / 60.0;
        self.buckets.retain(|b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * per_sec < capacity
        });
    }

    /// Clients with a bucket (for tests and the bench).
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// One client's refusals in its current one-minute window.
struct Failures {
    window_start: Instant,
    /// Failed credential checks (guesses).
    count: u32,
    /// Refusals logged at WARN.
    logged: u32,
    /// Whether this window's "throttled" WARN line was written.
    warned: bool,
    /// Whether this window's "rate limited" WARN line was written.
    rate_warned: bool,
}

impl Failures {
    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            count: 0,
            logged: 0,
            warned: false,
            rate_warned: false,
        }
    }
}

/// What the throttle says about a client that is about to present a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// It may try.
    Open,
    /// Refused for `retry_after` more seconds; `first` is true once per client and window (the
    /// caller logs that one at WARN).
    Closed { retry_after: u64, first: bool },
}

/// Whether a refusal is to be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Noted {
    pub log: bool,
    /// This is the last line logged for the client this window.
    pub last_logged: bool,
}

/// Failures allowed per client and minute (SPEC §8).
pub const MAX_FAILURES_PER_MIN: u32 = 10;
/// Refusal WARN lines per client and minute; past it refusals are only counted.
pub const LOG_LINES_PER_MIN: u32 = 20;

/// The guessing throttle: after `max` failures within a window, every further attempt from
/// that client is refused until the window ends. It also keeps the refusal log bounded per
/// client (see [`Noted`]).
pub struct FailureThrottle {
    max: u32,
    window: Duration,
    clients: Sharded<Failures>,
}

impl Default for FailureThrottle {
    fn default() -> Self {
        Self::new(MAX_FAILURES_PER_MIN, Duration::from_secs(60))
    }
}

impl FailureThrottle {
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            clients: Sharded::new(),
        }
    }

    /// Whether `ip` may present a credential now.
    pub fn check(&self, ip: IpAddr) -> Throttle {
        self.check_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Throttle {
        let key = client_key(ip);
        let mut shard = self.clients.shard(&key).lock();
        let Some(f) = shard.get_mut(&key) else {
            return Throttle::Open;
        };
        let elapsed = now.saturating_duration_since(f.window_start);
        if elapsed >= self.window {
            shard.remove(&key);
            return Throttle::Open;
        }
        if f.count < self.max {
            return Throttle::Open;
        }
        let first = !f.warned;
        f.warned = true;
        let rest = self.window - elapsed;
        Throttle::Closed {
            retry_after: rest.as_secs_f64().ceil().max(1.0) as u64,
            first,
        }
    }

    /// The current window of `key`, a new one when it has none or it ended.
    fn window<'a>(
        &self,
        shard: &'a mut HashMap<IpAddr, Failures>,
        key: IpAddr,
        now: Instant,
    ) -> &'a mut Failures {
        let f = shard.entry(key).or_insert_with(|| Failures::new(now));
        if now.saturating_duration_since(f.window_start) >= self.window {
            *f = Failures::new(now);
        }
        f
    }

    /// Notes a refusal of `ip`; a `guess` (a wrong or malformed credential) counts toward
    /// the throttle.
    pub fn refused(&self, ip: IpAddr, guess: bool) -> Noted {
        self.refused_at(ip, guess, Instant::now())
    }

    fn refused_at(&self, ip: IpAddr, guess: bool, now: Instant) -> Noted {
        let key = client_key(ip);
        let mut shard = self.clients.shard(&key).lock();
        let f = self.window(&mut shard, key, now);
        if guess {
            // The guessing minute starts with the first guess, not with an earlier refusal
            // that guessed nothing (a missing credential, a foreign Origin).
            if f.count == 0 {
                f.window_start = now;
            }
            f.count = f.count.saturating_add(1);
        }
        let log = f.logged < LOG_LINES_PER_MIN;
        if log {
            f.logged += 1;
        }
        Noted {
            log,
            last_logged: log && f.logged == LOG_LINES_PER_MIN,
        }
    }

    /// Counts a failed check of `ip`; returns the failures in its current window.
    #[cfg(test)]
    fn record_failure_at(&self, ip: IpAddr, now: Instant) -> u32 {
        self.refused_at(ip, true, now);
        let key = client_key(ip);
        self.clients
            .shard(&key)
            .lock()
            .get(&key)
            .map_or(0, |f| f.count)
    }

    #[cfg(test)]
    fn record_failure(&self, ip: IpAddr) -> u32 {
        self.record_failure_at(ip, Instant::now())
    }

    /// Whether a request-rate 429 of `ip` is the first this window (logged once a minute).
    pub fn rate_limited_once(&self, ip: IpAddr) -> bool {
        let key = client_key(ip);
        let mut shard = self.clients.shard(&key).lock();
        let f = self.window(&mut shard, key, Instant::now());
        !std::mem::replace(&mut f.rate_warned, true)
    }

    fn sweep_at(&self, now: Instant) {
        let window = self.window;
        self.clients
            .retain(|f| now.saturating_duration_since(f.window_start) < window);
    }

    /// Clients with refusals on record.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.clients.len()
    }
}

/// Anything the sweeper keeps small.
pub trait Sweep: Send + Sync + 'static {
    fn sweep(&self, now: Instant);
}

impl Sweep for RateLimiter {
    fn sweep(&self, now: Instant) {
        self.sweep_at(now);
    }
}

impl Sweep for FailureThrottle {
    fn sweep(&self, now: Instant) {
        self.sweep_at(now);
    }
}

/// Sweeps `target` every `every` on the current actix/tokio runtime until it is dropped.
pub fn spawn_sweeper<T: Sweep>(target: &Arc<T>, every: Duration) {
    let weak: Weak<T> = Arc::downgrade(target);
    actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            let Some(target) = weak.upgrade() else { break };
            target.sweep(Instant::now());
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bursts_to_the_limit_then_refills() {
        let rl = RateLimiter::new(60);
        let a = ip("10.0.0.1");
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(rl.check_at(a, t0).is_ok());
        }
        assert_eq!(rl.check_at(a, t0), Err(1));
        assert!(rl.check_at(a, t0 + Duration::from_millis(1100)).is_ok());
        assert!(
            rl.check_at(ip("10.0.0.2"), t0).is_ok(),
            "buckets are per IP"
        );
    }

    #[test]
    fn zero_is_off() {
        let rl = RateLimiter::new(0);
        for _ in 0..1000 {
            assert!(rl.check(ip("10.0.0.1")).is_ok());
        }
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(client_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(client_key(ip("10.1.2.3")), ip("10.1.2.3"));
        let rl = RateLimiter::new(3);
        let t0 = Instant::now();
        // Three addresses of one /64 share one bucket; the fourth request is refused.
        for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
            assert!(rl.check_at(ip(host), t0).is_ok());
        }
        assert!(rl.check_at(ip("2001:db8:1:2::4"), t0).is_err());
        assert!(
            rl.check_at(ip("2001:db8:1:3::1"), t0).is_ok(),
            "another /64"
        );
        assert_eq!(rl.tracked(), 2);
        let th = FailureThrottle::new(2, Duration::from_secs(60));
        th.record_failure_at(ip("2001:db8::1"), t0);
        th.record_failure_at(ip("2001:db8::2"), t0);
        assert!(matches!(
            th.check_at(ip("2001:db8::3"), t0),
            Throttle::Closed { .. }
        ));
    }

    #[test]
    fn the_throttle_closes_after_max_failures_for_the_rest_of_the_window() {
        let th = FailureThrottle::new(10, Duration::from_secs(60));
        let a = ip("192.0.2.7");
        let t0 = Instant::now();
        for i in 1..=10 {
            assert_eq!(th.check_at(a, t0), Throttle::Open);
            assert_eq!(th.record_failure_at(a, t0), i);
        }
        let t1 = t0 + Duration::from_secs(15);
        assert_eq!(
            th.check_at(a, t1),
            Throttle::Closed {
                retry_after: 45,
                first: true
            }
        );
        assert_eq!(
            th.check_at(a, t1),
            Throttle::Closed {
                retry_after: 45,
                first: false
            },
            "one WARN per client and window"
        );
        assert_eq!(th.check_at(ip("192.0.2.8"), t1), Throttle::Open);
        // A refusal that guessed nothing does not start the guessing minute early.
        let b = ip("192.0.2.9");
        th.refused_at(b, false, t0);
        for _ in 0..10 {
            th.refused_at(b, true, t1);
        }
        assert_eq!(
            th.check_at(b, t1),
            Throttle::Closed {
                retry_after: 60,
                first: true
            }
        );
        assert_eq!(th.check_at(a, t0 + Duration::from_secs(60)), Throttle::Open);
    }

    #[test]
    fn refusal_log_lines_are_bounded_per_client_and_window() {
        let th = FailureThrottle::new(10, Duration::from_secs(60));
        let a = ip("192.0.2.50");
        let t0 = Instant::now();
        let noted: Vec<Noted> = (0..25).map(|_| th.refused_at(a, false, t0)).collect();
        assert_eq!(
            noted.iter().filter(|n| n.log).count(),
            LOG_LINES_PER_MIN as usize
        );
        assert!(noted[LOG_LINES_PER_MIN as usize - 1].last_logged);
        assert_eq!(
            th.check_at(a, t0),
            Throttle::Open,
            "missing credentials are no guesses"
        );
        let later = t0 + Duration::from_secs(61);
        assert!(
            th.refused_at(a, false, later).log,
            "a new minute logs again"
        );
    }

    #[actix_rt::test]
    async fn the_sweeper_runs_on_a_timer() {
        // 6000 a minute: a used bucket is full again after 10 ms.
        let rl = Arc::new(RateLimiter::new(6000));
        let th = Arc::new(FailureThrottle::new(10, Duration::from_millis(50)));
        for i in 0..500u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000u32 + i).to_string();
            assert!(rl.check(ip(&a)).is_ok());
            th.record_failure(ip(&a));
        }
        assert_eq!((rl.tracked(), th.tracked()), (500, 500));
        spawn_sweeper(&rl, Duration::from_millis(30));
        spawn_sweeper(&th, Duration::from_millis(30));
        let start = Instant::now();
        while (rl.tracked(), th.tracked()) != (0, 0) && start.elapsed() < Duration::from_secs(5) {
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            (rl.tracked(), th.tracked()),
            (0, 0),
            "swept without any request"
        );
        // A client still inside its window is kept.
        th.record_failure(ip("10.9.9.9"));
        rl.sweep(Instant::now());
        th.sweep(Instant::now());
        assert_eq!(th.tracked(), 1);
    }

    /// Per-request cost with 10 000 distinct clients (run with `--release --nocapture` for the
    /// number in the bench notes); the assertion is only a loose guard against a regression to
    /// per-request sweeping.
    #[test]
    fn per_request_cost_with_10_000_clients() {
        let rl = RateLimiter::new(1_000_000);
        let ips: Vec<IpAddr> = (0..10_000u32)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i)))
            .collect();
        let rounds = 20;
        let start = Instant::now();
        for _ in 0..rounds {
            for a in &ips {
                let _ = rl.check(*a);
            }
        }
        let per = start.elapsed() / (rounds * ips.len() as u32);
        let clients = rl.tracked();
        let sweep_start = Instant::now();
        rl.sweep(Instant::now());
        let sweep = sweep_start.elapsed();
        println!("rate limiter: {clients} clients, {per:?} per request, one sweep {sweep:?}");
        assert_eq!(clients, 10_000);
        assert!(per < Duration::from_micros(50), "{per:?} per request");
    }
}
