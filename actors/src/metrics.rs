//! Lock-free counters and histograms, rendered as Prometheus text by the binary's `/metrics`.
//! Recording is a few relaxed atomic adds, so the hot paths can afford it on every event.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket bounds in microseconds for request latency and time to first token: from 100 µs
/// (a proxied request on loopback takes a few hundred; whole milliseconds would put every one
/// in the first bucket) to 60 s.
pub const LATENCY_BUCKETS_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// A cumulative histogram over fixed microsecond buckets, rendered in seconds.
pub struct Histogram {
    bounds: &'static [u64],
    /// One counter per bound plus the `+Inf` bucket (not cumulative; summed when rendered).
    counts: Vec<AtomicU64>,
    sum_us: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds` (ascending, microseconds).
    pub fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation in microseconds.
    pub fn observe_us(&self, us: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Records one observation in milliseconds (event timings are whole milliseconds).
    pub fn observe_ms(&self, ms: u64) {
        self.observe_us(ms.saturating_mul(1000));
    }

    /// Appends the histogram in Prometheus text format (seconds), with `labels` (e.g.
    /// `route="/v1/chat/completions"`, or empty).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let le = *bound as f64 / 1_000_000.0;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1_000_000.0;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Escapes a Prometheus label value.
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cumulative_buckets_in_seconds() {
        let h = Histogram::new(&[10_000, 100_000]);
        h.observe_ms(5);
        h.observe_ms(50);
        h.observe_us(500_000);
        let mut out = String::new();
        h.render(&mut out, "x", "route=\"a\"");
        assert!(
            out.contains("x_bucket{route=\"a\",le=\"0.01\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{route=\"a\",le=\"0.1\"} 2\n"));
        assert!(out.contains("x_bucket{route=\"a\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_sum{route=\"a\"} 0.555\n"));
        assert!(out.contains("x_count{route=\"a\"} 3\n"));
        assert_eq!(h.count(), 3);
        let fine = Histogram::new(LATENCY_BUCKETS_US);
        fine.observe_us(180);
        let mut out = String::new();
        fine.render(&mut out, "y", "");
        assert!(out.contains("y_bucket{le=\"0.0001\"} 0\n"), "{out}");
        assert!(
            out.contains("y_bucket{le=\"0.00025\"} 1\n"),
            "sub-millisecond: {out}"
        );
        assert_eq!(label("a\"b"), "a\\\"b");
    }
}
