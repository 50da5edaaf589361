//! The proxies under test: the switchboard binary and nginx, as child
//! processes with temp dirs, cleaned up by guards (also on panic).

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::client::{build_request, Conn, Flow};

/// A temp directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/switchboard-bench-<pid>-<nanos>-<tag>`.
    pub fn new(tag: &str) -> Result<TempDir, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "switchboard-bench-{}-{nanos}-{tag}",
            std::process::id()
        ));
        fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create temp dir {}: {e}", path.display()))?;
        Ok(TempDir(path))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    /// Send SIGTERM first and give it a moment (nginx: lets the master stop its workers).
    graceful: bool,
}

impl ChildGuard {
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        if self.graceful {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                if self.exited().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running switchboard (fields drop in order: process first, then its dir).
#[derive(Debug)]
pub struct Switchboard {
    child: ChildGuard,
    /// Listening address.
    pub addr: SocketAddr,
    /// Admin key it was started with.
    pub admin_key: String,
    dir: TempDir,
}

/// Registration and startup settings for [`Switchboard::start`].
#[derive(Debug)]
pub struct SwitchboardOpts<'a> {
    /// Binary.
    pub binary: &'a Path,
    /// `SWITCHBOARD_WORKERS`.
    pub workers: usize,
    /// More environment variables (set after the defaults, so they override them).
    pub extra_env: &'a [(&'a str, String)],
}

impl Switchboard {
    /// The broker's log so far (stderr, `RUST_LOG=warn`): why a backend went unhealthy.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Spawns the binary and waits for its "listening on" line.
    pub fn start(opts: &SwitchboardOpts<'_>) -> Result<Switchboard, String> {
        let dir = TempDir::new("switchboard")?;
        let data = dir.path().join("data");
        let log_path = dir.path().join("stderr.log");
        let log = fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let admin_key = format!("bench-admin-{}", std::process::id());
        let mut cmd = Command::new(opts.binary);
        cmd.arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg("0")
            .arg("--data-dir")
            .arg(&data)
            .env("SWITCHBOARD_ADMIN_KEY", &admin_key)
            .env("SWITCHBOARD_DEMO", "0")
            .env("SWITCHBOARD_RATE_LIMIT_PER_MIN", "0")
            .env("SWITCHBOARD_WORKERS", opts.workers.to_string())
            .env("RUST_LOG", "warn")
            .envs(opts.extra_env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", opts.binary.display()))?;
        let stdout = child.stdout.take();
        let mut guard = ChildGuard {
            child,
            graceful: false,
        };
        let (tx, rx) = mpsc::channel::<String>();
        if let Some(stdout) = stdout {
            // Reads the address line, then keeps draining until the child exits.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(rest) = line.strip_prefix("switchboard listening on http://") {
                        let _ = tx.send(rest.trim().to_string());
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(a) => break a,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = guard.child.wait();
                    return Err(format!(
                        "switchboard exited before listening; stderr:\n{}",
                        tail(&log_path, 20)
                    ));
                }
            }
            if let Some(status) = guard.exited() {
                return Err(format!(
                    "switchboard exited ({status}) before listening; stderr:\n{}",
                    tail(&log_path, 20)
                ));
            }
            if Instant::now() > deadline {
                return Err("switchboard did not print its listening line within 30 s".into());
            }
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("bad listening address {addr:?}: {e}"))?;
        Ok(Switchboard {
            child: guard,
            addr,
            admin_key,
            dir,
        })
    }

    /// Process id of the broker (for `/proc/<pid>/status`).
    pub fn pid(&self) -> u32 {
        self.child.child.id()
    }

    /// `Some(status)` once the broker process has exited.
    pub fn exit_status(&mut self) -> Option<String> {
        self.child.exited()
    }

    /// Registers `backend_url` for `model` (201 expected).
    pub async fn register(&self, model: &str, backend_url: &str) -> Result<(), String> {
        let body =
            serde_json::json!({"model_name": model, "endpoint_url": backend_url}).to_string();
        let req = build_request(
            "POST",
            self.addr,
            "/admin/register",
            &[("X-API-Key", &self.admin_key)],
            Some(body.as_bytes()),
        );
        let (status, text) = one_shot(self.addr, &req).await?;
        if status != 201 {
            return Err(format!("register {model}: HTTP {status}: {text}"));
        }
        Ok(())
    }

    /// Warnings/errors the broker logged (RUST_LOG=warn), counted, with samples.
    pub fn log_summary(&self) -> (usize, Vec<String>) {
        let text = fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut samples: Vec<String> = Vec::new();
        for line in &lines {
            // Strip the timestamp so repeats of one message collapse.
            let key: String = line
                .split_once(']')
                .map_or(*line, |(_, rest)| rest)
                .chars()
                .take(160)
                .collect();
            let generic: String = key
                .split_whitespace()
                .filter(|w| !w.starts_with("request_id=") && !w.starts_with("backend="))
                .collect::<Vec<_>>()
                .join(" ");
            if samples.len() < 6 && !samples.contains(&generic) {
                samples.push(generic);
            }
        }
        (lines.len(), samples)
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Sends one request on a fresh connection and returns (status, body text).
pub async fn one_shot(addr: SocketAddr, request: &[u8]) -> Result<(u16, String), String> {
    let fut = async {
        let mut conn = Conn::connect(addr).await?;
        conn.send(request).await?;
        let head = conn.read_head().await?;
        let mut body = Vec::new();
        conn.read_body(head.framing, |d| {
            if body.len() < 64 * 1024 {
                body.extend_from_slice(d);
            }
            Flow::Continue
        })
        .await?;
        Ok::<_, crate::client::Error>((head.status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(Duration::from_secs(30), fut).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("{addr}: {e}")),
        Err(_) => Err(format!("{addr}: no answer within 30 s")),
    }
}

/// A running nginx reverse proxy.
#[derive(Debug)]
pub struct Nginx {
    child: ChildGuard,
    /// Listening address.
    pub addr: SocketAddr,
    _dir: TempDir,
}

/// Finds nginx in PATH or the usual sbin directories.
pub fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/sbin",
                "/usr/local/sbin",
                "/usr/local/nginx/sbin",
                "/sbin",
            ]
            .iter()
            .map(PathBuf::from),
        )
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

pub(crate) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> Result<u16, String> {
    let l =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

impl Nginx {
    /// Process id of the nginx master (its workers are its children).
    pub fn pid(&self) -> u32 {
        self.child.child.id()
    }

    /// Writes a reverse-proxy config for `upstream` and starts nginx in the foreground.
    pub fn start(binary: &Path, upstream: SocketAddr, workers: usize) -> Result<Nginx, String> {
        let dir = TempDir::new("nginx")?;
        let d = dir.path().display().to_string();
        let port = free_port()?;
        let user = if is_root() { "user root root;\n" } else { "" };
        let conf = format!(
            "{user}worker_processes {workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 30000; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream mock {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
        }}
    }}
}}
"
        );
        let conf_path = dir.path().join("nginx.conf");
        fs::write(&conf_path, conf).map_err(|e| format!("cannot write nginx.conf: {e}"))?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut guard = ChildGuard {
            child,
            graceful: true,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = guard.exited() {
                return Err(format!(
                    "nginx exited ({status}); error.log:\n{}",
                    tail(&dir.path().join("error.log"), 10)
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err("nginx did not start listening within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx {
            child: guard,
            addr,
            _dir: dir,
        })
    }
}

/// Linux `USER_HZ`: the unit of utime/stime in `/proc/*/stat`.
pub const USER_HZ: u64 = 100;

/// `(ppid, utime + stime in ticks)` of a `/proc/.../stat` file.
fn read_stat(path: &str) -> Option<(u32, u64)> {
    let stat = fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name: state ppid ... utime(14) stime(15).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// utime + stime of a `/proc/.../stat` file (a process or one of its tasks), in ticks.
pub fn stat_ticks(path: &str) -> Option<u64> {
    read_stat(path).map(|(_, ticks)| ticks)
}

/// CPU time (user + system, all threads) of `pid` and its direct children only (nginx's
/// workers; neither proxy forks deeper), so one process and master + workers compare alike.
pub fn process_tree_cpu(pid: u32) -> Duration {
    let mut ticks = 0;
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, t)) = read_stat(&format!("/proc/{p}/stat")) {
                if p == pid || ppid == pid {
                    ticks += t;
                }
            }
        }
    }
    Duration::from_millis(ticks * 1000 / USER_HZ)
}

/// Pids of `pid` and its direct children (nginx's master and workers), for RSS sums.
pub fn process_tree_pids(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, _)) = read_stat(&format!("/proc/{p}/stat")) {
                if ppid == pid {
                    pids.push(p);
                }
            }
        }
    }
    pids
}

/// `VmRSS` of a process from `/proc/<pid>/status`, KiB.
pub fn vm_rss_kb(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Raises the fd soft limit to the hard one (and, as root, the hard limit too when it is
/// below `needed`) by re-executing through `sh -c 'ulimit -n'` (the bench has no libc
/// binding); returns the limit in effect, and a note when it stays below `needed`.
/// Children (the broker, nginx) inherit it.
pub fn ensure_nofile(needed: u64) -> (Option<u64>, Option<String>) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let parse = |v: Option<&str>| -> Option<u64> {
        match v? {
            "unlimited" => Some(u64::MAX),
            n => n.parse().ok(),
        }
    };
    let (soft, hard) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            let mut parts = l["Max open files".len()..].split_whitespace();
            (parse(parts.next()), parse(parts.next()))
        })
        .unwrap_or((None, None));
    let (Some(soft), Some(hard)) = (soft, hard) else {
        return (
            None,
            Some("cannot read RLIMIT_NOFILE from /proc/self/limits".into()),
        );
    };
    let raise_hard = hard < needed && is_root();
    if soft >= needed || (soft >= hard && !raise_hard) {
        let short = (soft < needed)
            .then(|| format!("fd limit {soft} (hard {hard}) is below the {needed} this run wants"));
        return (Some(soft), short);
    }
    if std::env::var_os("BENCH_NOFILE_REEXEC").is_some() {
        return (
            Some(soft),
            Some(format!(
                "could not raise the fd limit above {soft} (hard {hard}); this run wants {needed}"
            )),
        );
    }
    let Ok(exe) = std::env::current_exe() else {
        return (Some(soft), None);
    };
    let (flag, target) = if raise_hard {
        ("", needed.max(65536).to_string())
    } else if hard == u64::MAX {
        ("-S ", needed.max(65536).to_string())
    } else {
        ("-S ", hard.to_string())
    };
    let hard_s = if hard == u64::MAX {
        "unlimited".to_string()
    } else {
        hard.to_string()
    };
    eprintln!("raising the fd limit {soft} -> {target} (re-exec through sh)");
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("sh")
        .arg("-c")
        // Raising the hard limit needs CAP_SYS_RESOURCE (not every root has it, e.g. in a
        // container): fall back to the soft limit up to the hard one, and run either way.
        .arg(format!(
            "ulimit {flag}-n {target} 2>/dev/null || ulimit -S -n {hard_s} 2>/dev/null; exec \"$0\" \"$@\""
        ))
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("BENCH_NOFILE_REEXEC", "1")
        .exec();
    (
        Some(soft),
        Some(format!("re-exec to raise the fd limit failed: {err}")),
    )
}
