//! Lock-free counters and histograms, rendered as Prometheus text by the binary's `/metrics`.
//! Recording is a few relaxed atomic adds, so the hot paths can afford it on every event.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket bounds in milliseconds for request latency and time to first token.
pub const LATENCY_BUCKETS_MS: &[u64] = &[
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000,
];

/// A cumulative histogram over fixed millisecond buckets.
pub struct Histogram {
    bounds: &'static [u64],
    /// One counter per bound plus the `+Inf` bucket (not cumulative; summed when rendered).
    counts: Vec<AtomicU64>,
    sum_ms: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds` (ascending, milliseconds).
    pub fn new(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ms: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe_ms(&self, ms: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Appends the histogram in Prometheus text format (seconds), with `labels` (e.g.
    /// `route="/v1/chat/completions"`, or empty).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let le = *bound as f64 / 1000.0;
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
        let sum = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
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
        let h = Histogram::new(&[10, 100]);
        h.observe_ms(5);
        h.observe_ms(50);
        h.observe_ms(500);
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
        assert_eq!(label("a\"b"), "a\\\"b");
    }
}
