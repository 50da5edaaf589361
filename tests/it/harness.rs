//! The real broker binary on `127.0.0.1:0` with a temp sled dir, plus small HTTP helpers.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use parking_lot::Mutex;
use serde_json::{json, Value};

/// The admin key every test broker uses.
pub const ADMIN: &str = "test-admin-key-0001";

/// A running broker process; killed on drop.
pub struct Broker {
    child: Option<Child>,
    pub url: String,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    logs: Arc<Mutex<String>>,
    env: Vec<(String, String)>,
}

impl Broker {
    /// Starts a broker with a fresh data dir; `env` overrides the test defaults.
    pub fn start(env: &[(&str, &str)]) -> Broker {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut b = Self::spawn(
            &dir,
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        b._tmp = Some(tmp);
        b
    }

    fn spawn(dir: &Path, env: Vec<(String, String)>) -> Broker {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        for (k, _) in std::env::vars() {
            if k.starts_with("SWITCHBOARD_") || k == "PORT" || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.env("PORT", "0")
            .env("SWITCHBOARD_HOST", "127.0.0.1")
            .env("SWITCHBOARD_DATA_DIR", dir)
            .env("SWITCHBOARD_ADMIN_KEY", ADMIN)
            .env("SWITCHBOARD_DEMO", "0")
            .env("SWITCHBOARD_WORKERS", "2")
            .env("SWITCHBOARD_RATE_LIMIT_PER_MIN", "0")
            .env("RUST_LOG", "info");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn switchboard");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let out_logs = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Plain text, or the same message in a JSON log line.
                let message = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| line.clone());
                if let Some(url) = message.strip_prefix("switchboard listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
                out_logs.lock().push_str(&format!("{line}\n"));
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let err_logs = Arc::clone(&logs);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err_logs
                    .lock()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                std::thread::sleep(Duration::from_millis(200));
                panic!("broker did not start; logs:\n{}", logs.lock());
            }
        };
        Broker {
            child: Some(child),
            url,
            dir: dir.to_path_buf(),
            _tmp: None,
            logs,
            env,
        }
    }

    /// `kill -9`: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a new broker process on the same data dir (after `kill9`), same settings.
    pub fn restart(&mut self) {
        self.kill9();
        let mut next = Self::spawn(&self.dir.clone(), self.env.clone());
        self.url = next.url.clone();
        self.child = next.child.take();
        self.logs = Arc::clone(&next.logs);
    }

    /// Like [`Broker::restart`], with `env` set over the first start's settings (a mode change).
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        for (k, v) in env {
            self.env.retain(|(key, _)| key != k);
            self.env.push((k.to_string(), v.to_string()));
        }
        self.restart();
    }

    /// The process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit; its exit code, or `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Some(status.code().unwrap_or(-1));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().clone()
    }

    /// Waits up to `timeout` for a log line containing `needle`. The broker writes its log
    /// through a flusher thread, so a line may land just after the response it explains.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs.lock().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Registers `model` at `endpoint` and returns the record (asserts 201).
    pub async fn register(&self, model: &str, endpoint: &str) -> Value {
        let (status, body) = self
            .admin_json(
                "POST",
                "/admin/register",
                Some(json!({"model_name": model, "endpoint_url": endpoint})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register {model}: {body}");
        body
    }

    /// The single-server record of `id` (with its health history); `Null` if there is none.
    pub async fn server(&self, id: &str) -> Value {
        self.admin_json("GET", &format!("/admin/servers/{id}"), None)
            .await
            .1
    }

    /// An admin request with the right key.
    pub async fn admin_json(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        request(
            method,
            &format!("{}{path}", self.url),
            &[("x-api-key", ADMIN)],
            body.map(|b| b.to_string()),
        )
        .await
    }

    /// A request to this broker; returns status and JSON body (`Null` if not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> (StatusCode, Value) {
        request(method, &format!("{}{path}", self.url), headers, body).await
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One client for a test; awc needs an actix runtime (`#[actix_rt::test]`).
pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .disable_redirects()
        .finish()
}

/// Any request; body as JSON text.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> (StatusCode, Value) {
    let (status, _, bytes) = request_raw(method, url, headers, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Any request; returns status, headers and the raw body.
pub async fn request_raw(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> (StatusCode, awc::http::header::HeaderMap, bytes::Bytes) {
    let method = awc::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client().request(method, url);
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut resp = match body {
        Some(b) => {
            req.insert_header(("content-type", "application/json"))
                .send_body(b)
                .await
        }
        None => req.send().await,
    }
    .expect("request failed");
    let bytes = resp.body().limit(64 * 1024 * 1024).await.expect("body");
    (resp.status(), resp.headers().clone(), bytes)
}

/// A chat body for `model`.
pub fn chat(model: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello there"}]}).to_string()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns the time it took.
pub async fn wait_for<F, Fut>(timeout: Duration, mut cond: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond().await {
            return Some(start.elapsed());
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Unix milliseconds (same clock as the mock's abort timestamps).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A mock backend with default settings.
pub fn mock() -> mockllm::MockHandle {
    mockllm::MockServer::builder().spawn().expect("mock")
}

/// Asserts the OpenAI error shape and returns `error.code`.
pub fn assert_error_shape(body: &Value) -> Option<String> {
    let e = body
        .get("error")
        .unwrap_or_else(|| panic!("no error object in {body}"));
    assert!(
        e.get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty()),
        "message: {body}"
    );
    assert!(
        e.get("type").and_then(Value::as_str).is_some(),
        "type: {body}"
    );
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "param/code keys: {body}"
    );
    e.get("code").and_then(Value::as_str).map(str::to_string)
}

/// An `Authorization: Basic` value for `user:password`.
pub fn basic(user: &str, password: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}").into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}
