//! Talking to backends: the HTTP client every upstream request uses, and the health probe.
//!
//! `awc::Client` is `Rc`-based and `!Send`, so there is one per thread (per HTTP worker, and one
//! for the actor arbiter), each with its own keep-alive pool, reused across requests. The
//! connector's resolver enforces the URL policy at connect time.

use std::cell::RefCell;
use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_rt::net::TcpStream;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, Resolve, Resolver};
use awc::http::Uri;
use futures_util::future::{ready, Either, LocalBoxFuture, MapOk, Ready};
use futures_util::TryFutureExt;

use crate::endpoint::Endpoint;
use crate::response_framing::CloseDelimited;
use crate::routing::BackendHandle;
use crate::url_policy;

/// Most of a `/v1/models` answer a probe reads; a health endpoint has no business being larger.
const PROBE_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Keep-alive connections per worker pool. Generous: each in-flight stream holds one.
const POOL_LIMIT: usize = 4096;

/// Request/response header correlating a request across broker and backend logs: the one name
/// both the gateway and model streams send upstream.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Settings the client is built from; copied into every worker.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// TCP connect (+ DNS) timeout.
    pub connect_timeout: Duration,
    /// Time allowed until the response headers arrive.
    pub first_byte_timeout: Duration,
    /// Whether loopback/private backend addresses may be dialled.
    pub allow_private: bool,
}

/// DNS resolver that refuses non-public answers unless private backends are allowed
/// (the connect-time half of the SSRF guard, defeating DNS rebinding).
struct PolicyResolver {
    allow_private: bool,
}

impl Resolve for PolicyResolver {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> LocalBoxFuture<'a, Result<Vec<SocketAddr>, Box<dyn StdError>>> {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
            if !self.allow_private {
                let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
                url_policy::check_addrs(host, &ips)?;
            }
            Ok(addrs)
        })
    }
}

/// A connection to a backend as awc reads it (see [`CloseDelimited`]).
type UpstreamConnection = Connection<Uri, CloseDelimited<TcpStream>>;

/// The TCP connector awc dials backends with. It applies the policy to IP literal hosts: the
/// connector dials those without asking the resolver, so [`PolicyResolver`] alone would let
/// `http://127.0.0.1` (say, from a record stored in local mode) through in public mode. And it
/// reads every connection through [`CloseDelimited`], so a plain-HTTP backend's body that ends
/// at the close is not lost (TLS is added above this layer, so `https://` bytes pass through).
#[derive(Clone)]
struct UpstreamTcp<S> {
    inner: S,
    allow_private: bool,
}

fn read_through_framing(conn: Connection<Uri, TcpStream>) -> UpstreamConnection {
    let (tcp, uri) = conn.into_parts();
    Connection::new(uri, CloseDelimited::new(tcp))
}

impl<S> actix_service::Service<ConnectInfo<Uri>> for UpstreamTcp<S>
where
    S: actix_service::Service<
        ConnectInfo<Uri>,
        Response = Connection<Uri, TcpStream>,
        Error = ConnectError,
    >,
{
    type Response = UpstreamConnection;
    type Error = ConnectError;
    #[allow(clippy::type_complexity)]
    type Future = Either<
        Ready<Result<Self::Response, ConnectError>>,
        MapOk<S::Future, fn(Connection<Uri, TcpStream>) -> UpstreamConnection>,
    >;

    actix_service::forward_ready!(inner);

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        if !self.allow_private {
            let host = req.hostname().trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = host.parse::<IpAddr>() {
                if let Err(e) = url_policy::check_addrs(host, &[ip]) {
                    let refused = std::io::Error::new(std::io::ErrorKind::PermissionDenied, e);
                    return Either::Left(ready(Err(ConnectError::Io(refused))));
                }
            }
        }
        Either::Right(
            self.inner
                .call(req)
                .map_ok(read_through_framing as fn(_) -> _),
        )
    }
}

/// Builds this thread's client. Redirects are never followed (a backend must not bounce us to
/// an internal address) and no compression is negotiated on our own: the client's
/// `Accept-Encoding` is passed through and bodies are relayed as they come.
pub fn build_client(cfg: &UpstreamConfig) -> awc::Client {
    let resolver = Resolver::custom(PolicyResolver {
        allow_private: cfg.allow_private,
    });
    let tcp = UpstreamTcp {
        inner: actix_tls::connect::Connector::new(resolver).service(),
        allow_private: cfg.allow_private,
    };
    let connector = awc::Connector::new()
        .connector(tcp)
        .timeout(cfg.connect_timeout)
        .limit(POOL_LIMIT);
    awc::Client::builder()
        .connector(connector)
        .timeout(cfg.first_byte_timeout)
        .disable_redirects()
        .no_default_headers()
        .finish()
}

static INSTALLED: OnceLock<UpstreamConfig> = OnceLock::new();

thread_local! {
    /// This thread's client, built on first use from the installed configuration.
    static CLIENT: RefCell<Option<awc::Client>> = const { RefCell::new(None) };
}

/// Sets the configuration every thread's client is built from (once, at startup).
pub fn install(cfg: UpstreamConfig) {
    let _ = INSTALLED.set(cfg);
}

/// The calling thread's client (one keep-alive pool per thread, never one per request).
pub fn thread_client() -> awc::Client {
    CLIENT.with(|slot| {
        slot.borrow_mut()
            .get_or_insert_with(|| {
                let cfg = INSTALLED.get().cloned().unwrap_or(UpstreamConfig {
                    connect_timeout: Duration::from_secs(5),
                    first_byte_timeout: Duration::from_secs(60),
                    allow_private: false,
                });
                build_client(&cfg)
            })
            .clone()
    })
}

/// A successful probe.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOk {
    pub latency: Duration,
}

/// `GET {base}/models` with the backend's key: HTTP 200 with a JSON body is healthy.
/// The error string is what the admin sees as `last_error`.
pub async fn probe(
    client: &awc::Client,
    backend: &BackendHandle,
    timeout: Duration,
) -> Result<ProbeOk, String> {
    let started = Instant::now();
    let uri = backend.uri(Endpoint::Models)?;
    let path = uri.path().to_string();
    let mut req = client
        .get(uri)
        .timeout(timeout)
        .insert_header(("Accept", "application/json"));
    if let Some(auth) = &backend.auth_header {
        req = req.insert_header(("Authorization", auth.as_str()));
    }
    let attempt = async {
        let mut resp = req
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        let body = resp
            .body()
            .limit(PROBE_BODY_LIMIT)
            .await
            .map_err(|e| format!("reading body failed: {e}"))?;
        if status != awc::http::StatusCode::OK {
            return Err(format!("GET {path} answered HTTP {}", status.as_u16()));
        }
        serde_json::from_slice::<serde_json::Value>(&body)
            .map_err(|_| format!("GET {path} did not answer JSON"))?;
        Ok(ProbeOk {
            latency: started.elapsed(),
        })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn client(allow_private: bool) -> awc::Client {
        build_client(&UpstreamConfig {
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(2),
            allow_private,
        })
    }

    /// The connector dials IP literals without the resolver; the policy still applies.
    #[actix_rt::test]
    async fn ip_literals_are_checked_at_connect_time() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        for host in ["127.0.0.1".to_string(), "[::ffff:127.0.0.1]".to_string()] {
            let err = client(false)
                .get(format!("http://{host}:{port}/v1/models"))
                .send()
                .await
                .expect_err("refused");
            assert!(err.to_string().contains("loopback"), "{host}: {err}");
        }
        assert!(listener.accept().is_err(), "nothing connected");
        // Allowed, the same literal connects.
        let _ = client(true)
            .get(format!("http://127.0.0.1:{port}/v1/models"))
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(listener.accept().is_ok(), "connected when allowed");
    }
}
