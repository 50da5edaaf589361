//! The TCP connection under a request, for the two places that must end it at once rather than
//! after actix-http's linger (`client_disconnect_timeout`, which keeps reading a connection
//! whose request body was not read to the end, ~1 s): a WebSocket after its closing handshake
//! (RFC 6455 §7.1.1, the server closes TCP first) and a request cut off by the body timeout.
//!
//! How: `HttpServer::on_connect` stores the socket's fd in the connection data ([`ConnFd`]);
//! a response body wrapped in [`CloseOnEnd`] shuts the socket's read side when it ends. The
//! dispatcher, lingering to read the rest of the request, then reads end-of-file at once,
//! flushes what it has written (the close frame, the 408) and sends its FIN.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::dev::Extensions;
use actix_web::HttpRequest;
use futures_util::Stream;

/// The raw fd of a connection's socket, stored by [`remember`] for [`CloseOnEnd`].
#[derive(Clone, Copy, Debug)]
pub struct ConnFd(#[cfg(unix)] std::os::fd::RawFd);

/// `HttpServer::on_connect` callback: remembers the socket's fd in the connection data.
pub fn remember(conn: &dyn std::any::Any, data: &mut Extensions) {
    #[cfg(unix)]
    if let Some(sock) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        use std::os::fd::AsRawFd;
        data.insert(ConnFd(sock.as_raw_fd()));
    }
    #[cfg(not(unix))]
    let _ = (conn, data);
}

/// The connection of `req`, when [`remember`] saw it.
pub fn of(req: &HttpRequest) -> Option<ConnFd> {
    req.conn_data::<ConnFd>().copied()
}

impl ConnFd {
    /// Shuts the socket's read side: the dispatcher's next read sees end-of-file, so it stops
    /// waiting for the client and closes the connection after flushing its writes.
    ///
    /// Only call this while the connection's dispatcher is polling you (from a response
    /// body's `poll_next`): the dispatcher owns the socket then, so the fd is open and is this
    /// connection's (it cannot have been closed and reused).
    fn shut_read(self) {
        #[cfg(unix)]
        // SAFETY: shutdown(2) on an fd that is open for the reason above; it touches no memory.
        unsafe {
            libc::shutdown(self.0, libc::SHUT_RD);
        }
    }
}

/// A response body that ends its connection when it ends (see the module docs).
pub struct CloseOnEnd<S> {
    inner: Pin<Box<S>>,
    conn: Option<ConnFd>,
}

impl<S> CloseOnEnd<S> {
    /// Wraps `inner`; without a known connection it is a plain pass-through.
    pub fn new(inner: S, conn: Option<ConnFd>) -> Self {
        Self {
            inner: Box::pin(inner),
            conn,
        }
    }
}

impl<S: Stream> Stream for CloseOnEnd<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(None) = polled {
            if let Some(conn) = self.conn.take() {
                conn.shut_read();
            }
        }
        polled
    }
}
