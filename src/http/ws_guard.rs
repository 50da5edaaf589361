//! Frame-header inspection of a WebSocket client's bytes, ahead of actix-http's codec.
//!
//! actix-http's parser checks a frame's size only once the whole payload is buffered, so one
//! header announcing 256 MiB made the broker buffer 256 MiB. [`FrameGuard`] sits between the
//! request payload and the codec, follows frame boundaries (headers are read, payloads only
//! counted), and ends the stream at the first header that announces more than the limit or
//! breaks RFC 6455 §5.2 (reserved bits, an unmasked client frame, an unknown opcode, a long or
//! fragmented control frame). Frames before it are passed on whole. The verdict is left in a
//! [`Refusal`] cell the connection actor reads when its input ends: it closes with `1009` or
//! `1002` before a byte of the oversized payload is buffered.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

/// Why the guard stopped reading a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A frame header announced more than the limit (close `1009`).
    TooBig,
    /// A frame header broke the protocol (close `1002`), and how.
    Protocol(&'static str),
}

/// Shared between a [`FrameGuard`] and the actor that reads its verdict.
pub type Verdict = Rc<Cell<Option<Refusal>>>;

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;
/// Control frames carry at most 125 bytes (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// See the module docs.
pub struct FrameGuard<S> {
    inner: S,
    max_frame: u64,
    verdict: Verdict,
    /// Header bytes seen of the frame being read (a header may span chunks).
    header: [u8; MAX_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: u64,
    /// A refusal was found: the stream has ended.
    done: bool,
}

impl<S> FrameGuard<S> {
    /// Guards `inner` (the request payload of a WebSocket), refusing frames over `max_frame`.
    pub fn new(inner: S, max_frame: usize) -> (Self, Verdict) {
        let verdict = Verdict::default();
        let guard = Self {
            inner,
            max_frame: max_frame as u64,
            verdict: Rc::clone(&verdict),
            header: [0; MAX_HEADER],
            have: 0,
            skip: 0,
            done: false,
        };
        (guard, verdict)
    }

    /// Walks `chunk`; returns the offset of the first refused frame's header in it, if any
    /// (its start may lie in an earlier chunk: then 0).
    fn inspect(&mut self, chunk: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < chunk.len() {
            if self.skip > 0 {
                let take = self.skip.min((chunk.len() - i) as u64);
                i += take as usize;
                self.skip -= take;
                continue;
            }
            self.header[self.have] = chunk[i];
            self.have += 1;
            i += 1;
            let Some(need) = header_len(&self.header[..self.have]) else {
                continue;
            };
            if self.have < need {
                continue;
            }
            match check(&self.header[..need], self.max_frame) {
                Ok(length) => {
                    self.skip = length;
                    self.have = 0;
                }
                Err(refusal) => {
                    self.verdict.set(Some(refusal));
                    return Some(i.saturating_sub(need));
                }
            }
        }
        None
    }
}

/// Length of the header that starts with `seen`, once enough of it is known.
fn header_len(seen: &[u8]) -> Option<usize> {
    let second = *seen.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let ext = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    Some(2 + ext + mask)
}

/// Judges a whole client frame header; its payload length when it is acceptable.
fn check(header: &[u8], max_frame: u64) -> Result<u64, Refusal> {
    let (first, second) = (header[0], header[1]);
    if first & 0x70 != 0 {
        return Err(Refusal::Protocol("reserved bits set"));
    }
    if second & 0x80 == 0 {
        return Err(Refusal::Protocol("unmasked client frame"));
    }
    let opcode = first & 0x0f;
    let control = match opcode {
        0x0..=0x2 => false,
        0x8..=0xa => true,
        _ => return Err(Refusal::Protocol("unknown opcode")),
    };
    let length = match second & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[2..10]);
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    if control && (length > MAX_CONTROL_PAYLOAD || first & 0x80 == 0) {
        return Err(Refusal::Protocol("control frame too long or fragmented"));
    }
    if length > max_frame {
        return Err(Refusal::TooBig);
    }
    Ok(length)
}

impl<S, E> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => match self.inspect(&chunk) {
                None => Poll::Ready(Some(Ok(chunk))),
                Some(cut) => {
                    // The frames before the refused one still count; nothing after it is read.
                    self.done = true;
                    if cut == 0 {
                        Poll::Ready(None)
                    } else {
                        Poll::Ready(Some(Ok(chunk.slice(..cut))))
                    }
                }
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn masked(first: u8, payload_len: u64) -> Vec<u8> {
        let mut f = vec![first];
        match payload_len {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&n.to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f
    }

    async fn run(chunks: Vec<Vec<u8>>) -> (Vec<u8>, Option<Refusal>) {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::convert::Infallible>(Bytes::from(c))),
        );
        let (guard, verdict) = FrameGuard::new(stream, 1 << 20);
        let out: Vec<u8> = guard
            .map(|c| c.map(|b| b.to_vec()).unwrap_or_default())
            .concat()
            .await;
        (out, verdict.get())
    }

    #[actix_rt::test]
    async fn frames_within_the_limit_pass_whole_even_split_across_chunks() {
        let mut a = masked(0x81, 5);
        a.extend_from_slice(b"hello");
        let mut b = masked(0x82, 70_000);
        b.extend(std::iter::repeat_n(0u8, 70_000));
        let all: Vec<u8> = [a, b].concat();
        let chunks: Vec<Vec<u8>> = all.chunks(3).map(<[u8]>::to_vec).collect();
        let (out, verdict) = run(chunks).await;
        assert_eq!(out, all);
        assert_eq!(verdict, None);
    }

    #[actix_rt::test]
    async fn a_header_announcing_more_than_the_limit_ends_the_stream_at_the_header() {
        let mut ok = masked(0x81, 2);
        ok.extend_from_slice(b"hi");
        let big = masked(0x81, 1 << 28);
        let chunk = [ok.clone(), big, vec![0u8; 1000]].concat();
        let (out, verdict) = run(vec![chunk, vec![0u8; 4096]]).await;
        assert_eq!(out, ok, "the frame before passes, nothing of the big one");
        assert_eq!(verdict, Some(Refusal::TooBig));
        // Exactly the limit is fine.
        let (_, verdict) = run(vec![masked(0x82, 1 << 20)]).await;
        assert_eq!(verdict, None);
    }

    #[actix_rt::test]
    async fn protocol_errors_are_named() {
        let unmasked = vec![0x81u8, 0x02, b'h', b'i'];
        let cases = [
            (unmasked, "unmasked client frame"),
            (masked(0xc1, 1), "reserved bits set"),
            (masked(0x83, 1), "unknown opcode"),
            (masked(0x89, 126), "control frame too long or fragmented"),
            (masked(0x09, 1), "control frame too long or fragmented"),
        ];
        for (frame, why) in cases {
            assert_eq!(
                run(vec![frame]).await.1,
                Some(Refusal::Protocol(why)),
                "{why}"
            );
        }
    }
}
