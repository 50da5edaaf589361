use std::collections::VecDeque;

use futures_util::task::noop_waker_ref;
use proptest::prelude::*;

use super::*;

/// A socket that returns the given pieces, one per read, then the close; or, when `open`,
/// stays open after them (every later read is `Pending`, as a kept-alive connection's).
struct Pieces(VecDeque<Vec<u8>>, bool);

impl AsyncRead for Pieces {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.0.is_empty() && this.1 {
            return Poll::Pending;
        }
        if let Some(mut piece) = this.0.pop_front() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                this.0.push_front(piece.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Everything awc would read from `wire` cut into `cuts`, with reads of `read_size` bytes.
fn read_through(wire: &[u8], cuts: &[usize], read_size: usize) -> Vec<u8> {
    let mut pieces = VecDeque::new();
    let mut last = 0;
    for &c in cuts.iter().filter(|&&c| c > 0 && c < wire.len()) {
        if c > last {
            pieces.push_back(wire[last..c].to_vec());
            last = c;
        }
    }
    pieces.push_back(wire[last..].to_vec());
    let mut io = CloseDelimited::new(Pieces(pieces, false));
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut out = Vec::new();
    let mut scratch = vec![0u8; read_size];
    loop {
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut io).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return out,
            Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
            other => panic!("unexpected {other:?}"),
        }
    }
}

const CHUNKED: &[u8] =
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n\
    1c\r\ndata: {\"x\":\"HTTP/1.1 200\"}\n\n\r\n\
    7;ext=1\r\ndata: a\r\n0\r\nX-Trailer: 1\r\n\r\n";
const LENGTH: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 25\r\n\r\n{\"object\":\"list\",\"x\":[1]}";
const CLOSE_11: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n\
    data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";

fn as_http10(close: &[u8]) -> Vec<u8> {
    let mut v = close.to_vec();
    v[7] = b'0';
    v
}

#[test]
fn an_http11_close_delimited_answer_is_read_as_http10_and_nothing_else_changes() {
    assert_eq!(read_through(CLOSE_11, &[], 4096), as_http10(CLOSE_11));
}

#[test]
fn length_and_chunked_answers_pass_untouched_and_a_later_close_delimited_one_is_fixed() {
    let wire = [LENGTH, CHUNKED, LENGTH, CLOSE_11].concat();
    let want = [LENGTH, CHUNKED, LENGTH, &as_http10(CLOSE_11)].concat();
    assert_eq!(read_through(&wire, &[], 4096), want);
}

#[test]
fn interim_and_bodiless_answers_are_followed_by_the_real_one() {
    let wire = [
        &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        CLOSE_11,
    ]
    .concat();
    let mut want = wire.clone();
    let at = wire.len() - CLOSE_11.len() + 7;
    want[at] = b'0';
    assert_eq!(read_through(&wire, &[], 4096), want);
}

#[test]
fn http10_answers_and_bytes_that_are_not_http_pass_untouched() {
    let http10 = as_http10(CLOSE_11);
    assert_eq!(read_through(&http10, &[], 4096), http10);
    let tls = b"\x16\x03\x03\x00\x2aHTTP/1.1 200 OK\r\n\r\nbody".to_vec();
    assert_eq!(read_through(&tls, &[3], 4096), tls);
}

#[test]
fn a_malformed_chunk_stops_the_tracking_and_changes_nothing_after_it() {
    let bad =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nHTTP/1.1 200 OK\r\n\r\nrest";
    assert_eq!(read_through(bad, &[], 4096), bad.to_vec());
}

#[test]
fn a_connection_closed_inside_a_head_returns_what_came() {
    let cut = b"HTTP/1.1 200 OK\r\nContent-Ty";
    assert_eq!(read_through(cut, &[5], 4096), cut.to_vec());
}

#[test]
fn heads_are_parsed_for_status_version_length_and_chunking() {
    let info = parse_head(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n",
    );
    assert_eq!(
        info,
        Some(HeadInfo {
            http11: true,
            status: 200,
            length: Some(5),
            chunked: true
        })
    );
    assert_eq!(parse_head(b"HTTP/2 200\r\n\r\n"), None);
    assert_eq!(
        parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
        None
    );
}

/// The output for `wire` with every answer before the last one as sent and the last one (a
/// close-delimited HTTP/1.1 answer) read as HTTP/1.0.
fn with_last_fixed(before: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (
        [before, CLOSE_11].concat(),
        [before, &as_http10(CLOSE_11)].concat(),
    )
}

#[test]
fn heads_awc_accepts_are_followed_too_so_a_later_answer_is_still_fixed() {
    let cases: [&[u8]; 6] = [
        // bare LF line ends
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        // a space before the colon
        b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
        // a header value that is not UTF-8
        b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok",
        // an empty line before the next status line
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\r\n",
        // leading zeros in a chunk size
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000000003\r\nabc\r\n0\r\n\r\n",
        // HTTP/1.0 framing is by length only (awc reads Transfer-Encoding in HTTP/1.1 only)
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
    ];
    for before in cases {
        let (wire, want) = with_last_fixed(before);
        assert_eq!(
            read_through(&wire, &[], 4096),
            want,
            "after {:?}",
            String::from_utf8_lossy(before)
        );
    }
}

#[test]
fn a_switch_of_protocols_is_left_alone() {
    let wire = [
        &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"[..],
        CLOSE_11,
    ]
    .concat();
    assert_eq!(read_through(&wire, &[], 4096), wire);
}

#[test]
fn a_kept_alive_answer_is_delivered_at_once_not_held_for_more() {
    let answer = b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok".to_vec();
    let mut io = CloseDelimited::new(Pieces(VecDeque::from([answer.clone()]), true));
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut scratch = [0u8; 64];
    // awc's buffer may already hold bytes: the answer is appended after them.
    let mut buf = ReadBuf::new(&mut scratch);
    buf.put_slice(b"xyz");
    assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_ready());
    assert_eq!(buf.filled(), [&b"xyz"[..], &answer].concat());
    let mut rest = [0u8; 8];
    let mut buf = ReadBuf::new(&mut rest);
    assert!(Pin::new(&mut io).poll_read(&mut cx, &mut buf).is_pending());
}

proptest! {
    /// However the socket cuts the bytes and however little awc reads at a time, the output is
    /// the input with exactly the close-delimited answer's version changed.
    #[test]
    fn any_cutting_of_the_stream_gives_the_same_bytes(
        cuts in proptest::collection::vec(0usize..400, 0..12),
        read_size in 1usize..64,
    ) {
        let wire = [LENGTH, CHUNKED, CHUNKED, LENGTH, CLOSE_11].concat();
        let want = [LENGTH, CHUNKED, CHUNKED, LENGTH, &as_http10(CLOSE_11)].concat();
        let mut cuts = cuts;
        cuts.sort_unstable();
        prop_assert_eq!(read_through(&wire, &cuts, read_size), want);
    }
}
