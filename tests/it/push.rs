//! The push gateway (SPEC §6) against the real binary, with a small callback application
//! (actix-web on its own thread) that records every callback and answers by a rule.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse, HttpServer};
use awc::http::StatusCode;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::harness::{assert_error_shape, request, wait_for, Broker};

const SECRET: &str = "push-test-secret/+&";

/// How the callback application answers one callback.
#[derive(Clone)]
struct Answer {
    status: u16,
    body: String,
    delay: Duration,
}

impl Answer {
    fn ok(body: Value) -> Answer {
        Answer {
            status: 200,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    fn status(status: u16) -> Answer {
        Answer {
            status,
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
}

type Rule = Arc<dyn Fn(&Value) -> Answer + Send + Sync>;

/// One received callback.
#[derive(Clone, Debug)]
struct Call {
    at: Instant,
    query: String,
    body: Value,
}

struct Ctx {
    rule: Rule,
    calls: Mutex<Vec<Call>>,
}

/// The application behind the gateway.
struct CallbackApp {
    url: String,
    ctx: Arc<Ctx>,
}

async fn app_handler(req: HttpRequest, body: web::Bytes, ctx: web::Data<Arc<Ctx>>) -> HttpResponse {
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    ctx.calls.lock().push(Call {
        at: Instant::now(),
        query: req.query_string().to_string(),
        body: value.clone(),
    });
    let answer = (ctx.rule)(&value);
    if !answer.delay.is_zero() {
        actix_rt::time::sleep(answer.delay).await;
    }
    HttpResponse::build(StatusCode::from_u16(answer.status).unwrap())
        .content_type("application/json")
        .body(answer.body)
}

impl CallbackApp {
    fn start(rule: impl Fn(&Value) -> Answer + Send + Sync + 'static) -> CallbackApp {
        let ctx = Arc::new(Ctx {
            rule: Arc::new(rule),
            calls: Mutex::new(Vec::new()),
        });
        let server_ctx = Arc::clone(&ctx);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    actix_web::App::new()
                        .app_data(web::Data::new(Arc::clone(&server_ctx)))
                        .default_service(web::to(app_handler))
                })
                .workers(1)
                .backlog(4096)
                .disable_signals()
                .bind(("127.0.0.1", 0))
                .expect("bind callback app");
                tx.send(server.addrs()[0]).unwrap();
                server.run().await
            })
        });
        let addr = rx.recv_timeout(Duration::from_secs(10)).expect("app up");
        CallbackApp {
            url: format!("http://{addr}/hooks/push"),
            ctx,
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.ctx.calls.lock().clone()
    }

    fn with_action(&self, action: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.body["action"] == action)
            .collect()
    }

    fn disconnect_of(&self, token: &str) -> Option<Call> {
        self.with_action("disconnect")
            .into_iter()
            .find(|c| c.body["token"] == token)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SWITCHBOARD_PUSH_CALLBACK_URL", self.url.clone()),
            ("SWITCHBOARD_PUSH_SECRET", SECRET.to_string()),
        ]
    }
}

fn start_broker(app: &CallbackApp, extra: &[(&str, &str)]) -> Broker {
    let env = app.env();
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend_from_slice(extra);
    Broker::start(&all)
}

/// A client for push streams: no pool limit (the default is 100 connections).
fn stream_client() -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .timeout(Duration::from_secs(30))
        .finish()
}

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, awc::error::PayloadError>>>>;

/// One open push stream, read event by event.
struct Sse {
    status: StatusCode,
    headers: awc::http::header::HeaderMap,
    body: Body,
    buf: String,
}

#[derive(Debug, PartialEq)]
enum Next {
    Event(String),
    End,
    Timeout,
}

impl Sse {
    async fn open(client: &awc::Client, url: &str, headers: &[(&str, &str)]) -> Sse {
        let mut req = client.get(url);
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let resp = req.send().await.expect("push connect");
        Sse {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: Box::pin(resp),
            buf: String::new(),
        }
    }

    /// The next event block (without its blank line); comment-only blocks are skipped.
    async fn next(&mut self, timeout: Duration) -> Next {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block = self.buf[..end].to_string();
                self.buf.drain(..end + 2);
                if block.lines().all(|l| l.starts_with(':')) {
                    continue;
                }
                return Next::Event(block);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match actix_rt::time::timeout(left, self.body.next()).await {
                Err(_) => return Next::Timeout,
                Ok(None) => return Next::End,
                Ok(Some(Err(e))) => panic!("stream error: {e}"),
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
            }
        }
    }

    async fn event(&mut self) -> String {
        match self.next(Duration::from_secs(10)).await {
            Next::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

async fn send_raw(
    broker: &Broker,
    auth: Option<&str>,
    query: &str,
    body: String,
) -> (StatusCode, Value) {
    let bearer = auth.map(|s| format!("Bearer {s}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("authorization", b)])
        .unwrap_or_default();
    request(
        "POST",
        &format!("{}/internal/send{query}", broker.url),
        &headers,
        Some(body),
    )
    .await
}

async fn send(broker: &Broker, body: Value) -> (StatusCode, Value) {
    send_raw(broker, Some(SECRET), "", body.to_string()).await
}

fn encoded_secret() -> String {
    let mut out = String::new();
    for b in SECRET.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[actix_rt::test]
async fn connect_event_ordered_sends_and_close() {
    let app = CallbackApp::start(|v| {
        if v["action"] == "connect" {
            Answer::ok(json!({"event": {"name": "welcome", "data": {"token": v["token"]}}}))
        } else {
            Answer::status(204)
        }
    });
    let broker = start_broker(&app, &[]);
    let client = stream_client();
    let mut sse = Sse::open(
        &client,
        &format!("{}/push/rooms/42?lang=en", broker.url),
        &[("x-user", "ana"), ("cookie", "sid=abc")],
    )
    .await;
    assert_eq!(sse.status, StatusCode::OK);
    assert_eq!(
        sse.headers.get("content-type").unwrap(),
        "text/event-stream"
    );
    assert_eq!(sse.headers.get("cache-control").unwrap(), "no-cache");
    assert_eq!(sse.headers.get("x-accel-buffering").unwrap(), "no");

    // The connect callback: token, the request as made, the secret in the query.
    let connects = app.with_action("connect");
    assert_eq!(connects.len(), 1);
    let call = &connects[0];
    assert_eq!(call.query, format!("secret={}", encoded_secret()));
    let token = call.body["token"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&token).is_ok(), "token {token}");
    assert_eq!(call.body["request"]["url"], "/push/rooms/42?lang=en");
    assert_eq!(call.body["request"]["headers"]["x-user"], "ana");
    assert_eq!(call.body["request"]["headers"]["cookie"], "sid=abc");

    // The connect answer's event comes first.
    assert_eq!(
        sse.event().await,
        format!("event: welcome\ndata: {{\"token\":\"{token}\"}}")
    );

    // Sends arrive in order; strings as they are (multi-line → several data lines).
    for i in 0..30 {
        let (status, body) = send(
            &broker,
            json!({"token": token, "event": {"name": "tick", "data": format!("n={i}")}}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, _) = send(
        &broker,
        json!({"token": token, "event": {"data": "line one\nline two"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for i in 0..30 {
        assert_eq!(sse.event().await, format!("event: tick\ndata: n={i}"));
    }
    assert_eq!(sse.event().await, "data: line one\ndata: line two");

    // `close: true` ends the stream after its event, and the app hears `server_closed`.
    let (status, _) = send(
        &broker,
        json!({"token": token, "event": {"name": "bye", "data": 1}, "close": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sse.event().await, "event: bye\ndata: 1");
    assert_eq!(sse.next(Duration::from_secs(5)).await, Next::End);
    let (status, _) = send(&broker, json!({"token": token, "event": {"data": "late"}})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a closed token is gone");
    wait_for(Duration::from_secs(5), || async {
        app.disconnect_of(&token).is_some()
    })
    .await
    .expect("disconnect callback");
    let d = app.disconnect_of(&token).unwrap();
    assert_eq!(d.body["reason"], "server_closed");
    assert_eq!(d.body["request"]["url"], "/push/rooms/42?lang=en");
    assert_eq!(d.query, format!("secret={}", encoded_secret()));
    assert!(!broker.logs().contains(SECRET), "the secret was logged");
}

#[actix_rt::test]
async fn connect_answer_may_close_at_once() {
    let app = CallbackApp::start(|v| {
        if v["action"] == "connect" {
            Answer::ok(json!({"event": {"name": "full", "data": "try later"}, "close": true}))
        } else {
            Answer::status(200)
        }
    });
    let broker = start_broker(&app, &[]);
    let mut sse = Sse::open(&stream_client(), &format!("{}/push/x", broker.url), &[]).await;
    assert_eq!(sse.status, StatusCode::OK);
    assert_eq!(sse.event().await, "event: full\ndata: try later");
    assert_eq!(sse.next(Duration::from_secs(5)).await, Next::End);
    let token = app.with_action("connect")[0].body["token"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for(Duration::from_secs(5), || async {
        app.disconnect_of(&token).is_some()
    })
    .await
    .expect("disconnect");
    assert_eq!(
        app.disconnect_of(&token).unwrap().body["reason"],
        "server_closed"
    );
}

#[actix_rt::test]
async fn rejecting_callback_rejects_the_client_and_keeps_no_token() {
    let app = CallbackApp::start(|_| Answer::status(403));
    let broker = start_broker(&app, &[]);
    let (status, body) = request("GET", &format!("{}/push/private", broker.url), &[], None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(assert_error_shape(&body).as_deref(), Some("push_rejected"));
    let token = app.with_action("connect")[0].body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = send(&broker, json!({"token": token, "event": {"data": "x"}})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(assert_error_shape(&body).as_deref(), Some("unknown_token"));
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert!(
        app.with_action("disconnect").is_empty(),
        "a rejected connection is never reported as disconnected"
    );
}

#[actix_rt::test]
async fn secret_is_required_on_send_and_nowhere_else() {
    let app = CallbackApp::start(|_| Answer::status(200));
    let broker = start_broker(&app, &[]);
    let body = json!({"token": "00000000-0000-0000-0000-000000000000", "event": {"data": "x"}})
        .to_string();
    // Missing or wrong secret: 401, in the error shape.
    for (auth, query) in [
        (None, ""),
        (Some("wrong"), ""),
        (None, "?secret=wrong"),
        (Some(""), ""),
    ] {
        let (status, resp) = send_raw(&broker, auth, query, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?} {query}: {resp}");
        assert_error_shape(&resp);
    }
    // Right secret (header or query), unknown token: 404.
    let (status, resp) = send_raw(&broker, Some(SECRET), "", body.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{resp}");
    let q = format!("?secret={}", encoded_secret());
    let (status, resp) = send_raw(&broker, None, &q, body.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{resp}");
    // Bad bodies: 400; too large: 413.
    for bad in [
        "not json".to_string(),
        json!({"event": {"data": 1}}).to_string(),
        json!({"token": "t"}).to_string(),
        json!({"token": "t", "event": {"data": 1}, "clsoe": true}).to_string(),
        json!({"token": "t", "event": {"name": "a\nb", "data": 1}}).to_string(),
    ] {
        let (status, resp) = send_raw(&broker, Some(SECRET), "", bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {resp}");
        assert_error_shape(&resp);
    }
    let huge = json!({"token": "t", "event": {"data": "x".repeat(1024 * 1024 + 1)}}).to_string();
    let (status, _) = send_raw(&broker, Some(SECRET), "", huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // A client's `?secret=` means nothing to the gateway: the app decides (here: accepts).
    let mut sse = Sse::open(
        &stream_client(),
        &format!("{}/push/x?secret=wrong", broker.url),
        &[],
    )
    .await;
    assert_eq!(sse.status, StatusCode::OK);
    assert_eq!(sse.next(Duration::from_millis(200)).await, Next::Timeout);
    assert!(!broker.logs().contains(SECRET), "the secret was logged");
}

#[actix_rt::test]
async fn off_without_a_callback_url() {
    let broker = Broker::start(&[]);
    let (status, body) = request("GET", &format!("{}/push/x", broker.url), &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error_shape(&body);
    let (status, body) = send(&broker, json!({"token": "t", "event": {"data": 1}})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error_shape(&body);
}

#[actix_rt::test]
async fn failing_callbacks_answer_502_and_504() {
    // Nothing listens there: 502.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/cb", closed.local_addr().unwrap());
    drop(closed);
    let dead = Broker::start(&[
        ("SWITCHBOARD_PUSH_CALLBACK_URL", &dead_url),
        ("SWITCHBOARD_PUSH_SECRET", SECRET),
    ]);
    let (status, body) = request("GET", &format!("{}/push/x", dead.url), &[], None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_error_shape(&body);

    // An app slower than the 5 s callback timeout: 504, logged.
    let app = CallbackApp::start(|_| Answer {
        status: 200,
        body: String::new(),
        delay: Duration::from_secs(8),
    });
    let broker = start_broker(&app, &[]);
    let started = Instant::now();
    let (status, body) = request("GET", &format!("{}/push/slow", broker.url), &[], None).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(started.elapsed() < Duration::from_secs(7));
    assert!(
        broker
            .wait_for_log("timed out", Duration::from_secs(2))
            .await,
        "{}",
        broker.logs()
    );
    let token = app.with_action("connect")[0].body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = send(&broker, json!({"token": token, "event": {"data": 1}})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_rt::test]
async fn client_close_is_reported_within_a_second() {
    let app = CallbackApp::start(|v| {
        if v["action"] == "connect" {
            Answer::ok(json!({"event": {"name": "hi", "data": ""}}))
        } else {
            Answer::status(200)
        }
    });
    let broker = start_broker(&app, &[]);
    let mut sse = Sse::open(&stream_client(), &format!("{}/push/a", broker.url), &[]).await;
    assert_eq!(sse.event().await, "event: hi\ndata: ");
    let token = app.with_action("connect")[0].body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let closed_at = Instant::now();
    drop(sse);
    let took = wait_for(Duration::from_secs(5), || async {
        app.disconnect_of(&token).is_some()
    })
    .await
    .expect("disconnect callback");
    let d = app.disconnect_of(&token).unwrap();
    assert_eq!(d.body["reason"], "client_closed");
    assert_eq!(d.body["request"]["url"], "/push/a");
    let latency = d.at.duration_since(closed_at);
    assert!(
        latency < Duration::from_secs(1),
        "reported after {latency:?} ({took:?})"
    );
    // Exactly one disconnect, and the token is gone.
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.with_action("disconnect").len(), 1);
    let (status, _) = send(&broker, json!({"token": token, "event": {"data": 1}})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_rt::test]
async fn shutdown_reports_every_open_connection() {
    let app = CallbackApp::start(|_| Answer::status(200));
    let broker = start_broker(&app, &[]);
    let client = stream_client();
    let mut streams = Vec::new();
    for i in 0..3 {
        let sse = Sse::open(&client, &format!("{}/push/s/{i}", broker.url), &[]).await;
        assert_eq!(sse.status, StatusCode::OK);
        streams.push(sse);
    }
    let tokens: Vec<String> = app
        .with_action("connect")
        .iter()
        .map(|c| c.body["token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tokens.len(), 3);
    broker.terminate();
    let all = wait_for(Duration::from_secs(15), || async {
        tokens.iter().all(|t| app.disconnect_of(t).is_some())
    })
    .await;
    let reasons: Vec<Value> = tokens
        .iter()
        .map(|t| {
            app.disconnect_of(t)
                .map_or(Value::Null, |c| c.body["reason"].clone())
        })
        .collect();
    assert!(
        all.is_some() && reasons.iter().all(|r| r == "shutdown"),
        "disconnect reasons after SIGTERM: {reasons:?}\nlogs:\n{}",
        broker.logs()
    );
    for mut s in streams {
        assert_eq!(s.next(Duration::from_secs(5)).await, Next::End);
    }
}

fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// 1 000 concurrent push connections, 5 events each through `/internal/send` (the last one
/// closes): every event arrives, in order, and every connection is reported closed.
#[actix_rt::test]
async fn thousand_connections_lose_nothing() {
    const N: usize = 1000;
    const EVENTS: usize = 5;
    let app = CallbackApp::start(|v| {
        if v["action"] == "connect" {
            Answer::ok(json!({"event": {"name": "hello", "data": v["token"]}}))
        } else {
            Answer::status(200)
        }
    });
    let broker = start_broker(&app, &[("SWITCHBOARD_MAX_CONNECTIONS_PER_IP", "0")]);
    let idle_rss_kb = vm_rss_kb(broker.pid()).unwrap_or(0);
    let started = Instant::now();
    let client = stream_client();
    let url = broker.url.clone();
    let mut streams: Vec<Sse> = futures_util::future::join_all((0..N).map(|i| {
        let client = &client;
        let url = format!("{url}/push/load/{i}");
        async move { Sse::open(client, &url, &[]).await }
    }))
    .await;
    let mut tokens = Vec::with_capacity(N);
    for s in &mut streams {
        assert_eq!(s.status, StatusCode::OK);
        let hello = s.event().await;
        let token = hello
            .strip_prefix("event: hello\ndata: ")
            .unwrap_or_else(|| panic!("hello: {hello}"))
            .to_string();
        tokens.push(token);
    }
    let connected = started.elapsed();
    let pid = broker.pid();
    let rss_kb = vm_rss_kb(pid).unwrap_or(0);
    eprintln!(
        "push: {N} connections open after {connected:?}; broker VmRSS {:.1} MiB (idle {:.1} MiB)",
        rss_kb as f64 / 1024.0,
        idle_rss_kb as f64 / 1024.0
    );

    let sender = awc::Client::builder()
        .connector(awc::Connector::new().limit(64))
        .timeout(Duration::from_secs(30))
        .finish();
    let sends = futures_util::stream::iter(tokens.clone())
        .map(|token| {
            let sender = sender.clone();
            let url = format!("{}/internal/send", broker.url);
            async move {
                for k in 0..EVENTS {
                    let body = json!({
                        "token": token,
                        "event": {"name": "n", "data": k.to_string()},
                        "close": k + 1 == EVENTS,
                    });
                    let mut resp = sender
                        .post(&url)
                        .insert_header(("authorization", format!("Bearer {SECRET}")))
                        .insert_header(("content-type", "application/json"))
                        .send_body(body.to_string())
                        .await
                        .expect("send");
                    let _ = resp.body().await;
                    assert_eq!(resp.status(), StatusCode::OK);
                }
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>();
    let reads = futures_util::future::join_all(streams.iter_mut().map(|s| async move {
        let mut got = Vec::new();
        loop {
            match s.next(Duration::from_secs(20)).await {
                Next::Event(e) => got.push(e),
                Next::End => return got,
                Next::Timeout => panic!("stream stalled after {got:?}"),
            }
        }
    }));
    let (_, received) = futures_util::future::join(sends, reads).await;
    let expected: Vec<String> = (0..EVENTS)
        .map(|k| format!("event: n\ndata: {k}"))
        .collect();
    for (i, got) in received.iter().enumerate() {
        assert_eq!(got, &expected, "connection {i}");
    }
    let ok = wait_for(Duration::from_secs(10), || async {
        app.with_action("disconnect").len() >= N
    })
    .await;
    let disconnects = app.with_action("disconnect");
    assert!(ok.is_some(), "{} of {N} disconnects", disconnects.len());
    assert!(disconnects
        .iter()
        .all(|d| d.body["reason"] == "server_closed"));
    eprintln!(
        "push: {N} connections × {EVENTS} events done in {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[actix_rt::test]
async fn the_callback_never_gets_the_brokers_own_credentials() {
    let app = CallbackApp::start(|_| Answer::ok(json!({})));
    let broker = start_broker(&app, &[("SWITCHBOARD_UI_PASSWORD", "ui-password-01")]);
    let client = stream_client();
    let ui_login = crate::harness::basic("admin", "ui-password-01");
    // A browser logged in to the dashboard sends its Basic login to every path of the origin.
    let first = Sse::open(
        &client,
        &format!("{}/push/a", broker.url),
        &[
            ("authorization", &ui_login),
            ("x-api-key", crate::harness::ADMIN),
            ("x-user", "ana"),
        ],
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    // The application's own credentials still reach it.
    let second = Sse::open(
        &client,
        &format!("{}/push/b", broker.url),
        &[("authorization", "Bearer app-session-token")],
    )
    .await;
    assert_eq!(second.status, StatusCode::OK);
    let connects = app.with_action("connect");
    assert_eq!(connects.len(), 2);
    let headers = &connects[0].body["request"]["headers"];
    assert_eq!(headers["x-user"], "ana");
    assert!(headers.get("authorization").is_none(), "{headers}");
    assert!(headers.get("x-api-key").is_none(), "{headers}");
    assert_eq!(
        connects[1].body["request"]["headers"]["authorization"],
        "Bearer app-session-token"
    );
}

#[actix_rt::test]
async fn push_connects_count_against_the_per_ip_rate_limit() {
    let app = CallbackApp::start(|_| Answer::ok(json!({})));
    let broker = start_broker(&app, &[("SWITCHBOARD_RATE_LIMIT_PER_MIN", "3")]);
    let client = stream_client();
    let mut open = Vec::new();
    for i in 0..3 {
        let sse = Sse::open(&client, &format!("{}/push/r{i}", broker.url), &[]).await;
        assert_eq!(sse.status, StatusCode::OK, "connect {i}");
        open.push(sse);
    }
    // Read as a stream: before the fix this was a 200 that never ends.
    let mut fourth = Sse::open(&client, &format!("{}/push/r3", broker.url), &[]).await;
    assert_eq!(fourth.status, StatusCode::TOO_MANY_REQUESTS);
    let mut text = String::new();
    while let Ok(Some(Ok(chunk))) =
        actix_rt::time::timeout(Duration::from_secs(5), fourth.body.next()).await
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!(
        assert_error_shape(&body).as_deref(),
        Some("rate_limit_exceeded")
    );
    assert_eq!(
        app.with_action("connect").len(),
        3,
        "the refused connect cost the application no callback"
    );
}

#[actix_rt::test]
async fn a_foreign_origin_cannot_open_a_push_connection() {
    let app = CallbackApp::start(|_| Answer::ok(json!({})));
    let broker = start_broker(&app, &[]);
    let client = stream_client();
    for origin in ["http://evil.example", "null"] {
        let sse = Sse::open(
            &client,
            &format!("{}/push/x", broker.url),
            &[("origin", origin)],
        )
        .await;
        assert_eq!(sse.status, StatusCode::FORBIDDEN, "{origin}");
    }
    assert!(app.calls().is_empty(), "no callback for a refused connect");
    let own = Sse::open(
        &client,
        &format!("{}/push/x", broker.url),
        &[("origin", &broker.url)],
    )
    .await;
    assert_eq!(own.status, StatusCode::OK);
}
