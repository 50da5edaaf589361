//! A timer for "nothing arrived for this long" that costs nothing per arrival.
//!
//! Streams reset their idle and keep-alive timeouts on every chunk. Resetting a tokio timer
//! per chunk means a timer-wheel removal and insertion per token; instead the timer is armed
//! once and, when it fires, compared with the last arrival: fired early, it is re-armed for the
//! real due time. A chunk costs one `Instant::now()`.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{sleep_until, Instant, Sleep};

/// See the module docs.
pub struct SilenceTimer {
    timer: Pin<Box<Sleep>>,
    /// The last arrival (or the start).
    last: Instant,
    period: Duration,
    /// A hard deadline the silence limit never passes (a stream's total timeout).
    cap: Option<Instant>,
}

impl SilenceTimer {
    /// Elapses after `period` without [`touch`](Self::touch), or at `cap`, whichever is first.
    pub fn new(period: Duration, cap: Option<Instant>) -> Self {
        let last = Instant::now();
        let mut timer = Self {
            timer: Box::pin(sleep_until(last)),
            last,
            period,
            cap,
        };
        let due = timer.due();
        timer.timer.as_mut().reset(due);
        timer
    }

    /// Something arrived: the silence starts again from now.
    pub fn touch(&mut self) {
        self.last = Instant::now();
    }

    fn due(&self) -> Instant {
        let due = self.last + self.period;
        self.cap.map_or(due, |cap| due.min(cap))
    }

    /// Ready once the silence lasted `period` (or the cap passed). Pending registers `cx`'s
    /// waker; a timer that fired early is re-armed and polled again, so it wakes us later.
    pub fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let due = self.due();
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(due);
        }
        Poll::Pending
    }

    /// Resolves once the silence lasted `period` (or the cap passed).
    pub async fn elapsed(&mut self) {
        poll_fn(|cx| self.poll_elapsed(cx)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn touches_push_the_end_back_and_the_cap_holds() {
        let start = Instant::now();
        let mut t = SilenceTimer::new(Duration::from_millis(100), None);
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            t.touch();
        }
        t.elapsed().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(400),
            "last touch at 300 + 100"
        );

        let start = Instant::now();
        let cap = start + Duration::from_millis(150);
        let mut t = SilenceTimer::new(Duration::from_millis(100), Some(cap));
        tokio::time::sleep(Duration::from_millis(90)).await;
        t.touch();
        t.elapsed().await;
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(150),
            "the cap comes first"
        );
    }
}
