//! Gives freed memory back to the operating system after many sessions or connections end.
//!
//! glibc's malloc keeps what is freed in its arenas for the next allocation, so after 10 000
//! WebSocket sessions disconnect and expire the process would stay near its peak RSS for good
//! (measured in bench/README.md, "Memory comes back"). `malloc_trim(0)` walks every arena and
//! hands each whole free page back. It is not free (it locks each arena in turn, a few
//! milliseconds for a large heap), so it runs on a thread of its own, never on a worker's event
//! loop, and only after a mass ending: once [`RELEASE_AFTER`] sessions or connections have ended
//! since the last release, it waits for the wave to pass (no ending for [`SETTLE`], or
//! [`MAX_WAIT`] at most: the actors of the ones that just ended are dropped after they report),
//! then trims once. Steady churn pays at most one trim per [`MAX_WAIT`] + [`MIN_GAP`].
//!
//! Other allocators need none of this; on targets without glibc the trim is a no-op.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Sessions or connections ended since the last release that make the next one worth it.
pub const RELEASE_AFTER: usize = 1024;
/// Quiet time (no session or connection ending) that says a wave of endings has passed.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Longest wait for a wave to pass before trimming anyway (steady churn never goes quiet).
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Least time between the end of one trim and the next.
pub const MIN_GAP: Duration = Duration::from_secs(5);

/// Counts endings and schedules releases; one per process (the allocator is process-wide).
#[derive(Debug)]
pub struct MemoryRelease {
    ended: AtomicUsize,
    scheduled: AtomicBool,
    releases: AtomicUsize,
}

/// The process's one [`MemoryRelease`].
pub static MEMORY_RELEASE: MemoryRelease = MemoryRelease::new();

impl MemoryRelease {
    /// Nothing ended yet.
    pub const fn new() -> Self {
        Self {
            ended: AtomicUsize::new(0),
            scheduled: AtomicBool::new(false),
            releases: AtomicUsize::new(0),
        }
    }

    /// One session or connection ended; schedules a release when enough have.
    pub fn note_ended(&'static self) {
        let ended = self.ended.fetch_add(1, Ordering::Relaxed) + 1;
        if ended < RELEASE_AFTER || self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("memory-release".into())
            .spawn(move || self.release(SETTLE, MAX_WAIT, MIN_GAP));
        if let Err(e) = spawned {
            log::warn!("memory release: cannot start its thread: {e}");
            self.scheduled.store(false, Ordering::Release);
        }
    }

    /// Waits until nothing ended for `settle` (at most `max_wait`), trims, and keeps the next
    /// release away for `gap`.
    fn release(&self, settle: Duration, max_wait: Duration, gap: Duration) {
        let deadline = std::time::Instant::now() + max_wait;
        let mut seen = self.ended.load(Ordering::Relaxed);
        loop {
            std::thread::sleep(settle);
            let now = self.ended.load(Ordering::Relaxed);
            if now == seen || std::time::Instant::now() >= deadline {
                break;
            }
            seen = now;
        }
        let ended = self.ended.swap(0, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let returned = trim();
        self.releases.fetch_add(1, Ordering::Relaxed);
        // The process's RSS is in `/debug/memory` and `process_resident_memory_bytes`.
        log::info!(
            "memory release after {ended} sessions/connections ended: {} in {} ms",
            if returned {
                "memory returned to the OS"
            } else {
                "nothing to return"
            },
            started.elapsed().as_millis()
        );
        std::thread::sleep(gap);
        self.scheduled.store(false, Ordering::Release);
    }

    /// Releases done so far (tests, `/debug/memory`).
    pub fn releases(&self) -> usize {
        self.releases.load(Ordering::Relaxed)
    }
}

impl Default for MemoryRelease {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether any memory went back to the OS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim only walks the allocator's own arenas under their locks; it takes no
    // pointer from us and is safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_scheduled_below_the_threshold() {
        static RELEASE: MemoryRelease = MemoryRelease::new();
        for _ in 0..RELEASE_AFTER - 1 {
            RELEASE.note_ended();
        }
        assert!(!RELEASE.scheduled.load(Ordering::Acquire));
        assert_eq!(RELEASE.ended.load(Ordering::Relaxed), RELEASE_AFTER - 1);
    }

    #[test]
    fn a_release_trims_once_resets_the_count_and_frees_the_schedule() {
        static RELEASE: MemoryRelease = MemoryRelease::new();
        RELEASE.ended.store(RELEASE_AFTER, Ordering::Relaxed);
        RELEASE.scheduled.store(true, Ordering::Release);
        RELEASE.release(Duration::ZERO, Duration::ZERO, Duration::ZERO);
        assert_eq!(RELEASE.releases(), 1);
        assert_eq!(RELEASE.ended.load(Ordering::Relaxed), 0);
        assert!(!RELEASE.scheduled.load(Ordering::Acquire));
    }

    #[test]
    fn the_threshold_schedules_one_release_however_many_end_meanwhile() {
        static RELEASE: MemoryRelease = MemoryRelease::new();
        for _ in 0..RELEASE_AFTER * 3 {
            RELEASE.note_ended();
        }
        assert!(RELEASE.scheduled.load(Ordering::Acquire));
        // the thread waits for a quiet SETTLE, trims once, then MIN_GAP before another may start
        std::thread::sleep(SETTLE * 2 + Duration::from_millis(500));
        assert_eq!(RELEASE.releases(), 1);
        assert!(RELEASE.scheduled.load(Ordering::Acquire), "within MIN_GAP");
    }

    #[test]
    fn a_wave_that_goes_on_delays_the_trim_until_it_is_quiet() {
        static RELEASE: MemoryRelease = MemoryRelease::new();
        RELEASE.scheduled.store(true, Ordering::Release);
        let worker = std::thread::spawn(|| {
            RELEASE.release(
                Duration::from_millis(100),
                Duration::from_secs(10),
                Duration::ZERO,
            )
        });
        // endings every 20 ms for 600 ms: no quiet 100 ms, so no trim yet
        for _ in 0..30 {
            RELEASE.ended.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            RELEASE.releases(),
            0,
            "trimmed while the wave was still going"
        );
        worker.join().unwrap();
        assert_eq!(RELEASE.releases(), 1);
        assert_eq!(RELEASE.ended.load(Ordering::Relaxed), 0);
    }
}
