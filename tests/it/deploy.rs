//! The container's entrypoint (`docker/entrypoint.sh`) and `railway.toml`, without a docker
//! engine: the script runs here as root against a root-owned temp dir standing in for Railway's
//! volume, with its paths overridden by environment variables.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use awc::http::StatusCode;

use crate::harness::*;

/// The uid/gid the image runs the broker as.
const APP_UID: u32 = 10001;

fn entrypoint() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/entrypoint.sh")
}

/// Whether this process can chown and drop privileges; the tests that need it skip otherwise.
fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    println!("{test}: skipped, needs root (chown and setpriv); CI runs as root");
    true
}

/// A temp dir every user can traverse (the unprivileged program must reach its data dir and
/// the stub), with `data/` root-owned and 0755 as Railway mounts a fresh volume.
fn volume() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (tmp, data)
}

/// A stand-in for the broker: writes who it runs as and its arguments into the data dir (so it
/// also proves it can write there).
fn stub(dir: &Path) -> PathBuf {
    let path = dir.join("stub");
    std::fs::write(
        &path,
        "#!/bin/sh\nset -e\nd=\"$SWITCHBOARD_DATA_DIR\"\n\
         printf 'uid=%s gid=%s groups=%s\\n' \"$(id -u)\" \"$(id -g)\" \"$(id -G)\" > \"$d/who\"\n\
         printf '%s|' \"$@\" >> \"$d/who\"\n",
    )
    .expect("stub");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn the_entrypoint_is_executable_in_the_repository() {
    let mode = std::fs::metadata(entrypoint()).expect("entrypoint").mode();
    assert_eq!(
        mode & 0o111,
        0o111,
        "docker/entrypoint.sh must be executable: the Dockerfile copies it as it is"
    );
}

#[test]
fn entrypoint_as_root_hands_the_volume_to_10001_and_drops_privileges() {
    if skip_unless_root("entrypoint_as_root_hands_the_volume_to_10001_and_drops_privileges") {
        return;
    }
    let (tmp, data) = volume();
    // A file left by an older image that ran as root: it must be handed over too.
    std::fs::write(data.join("old"), "x").expect("old file");
    let stub = stub(tmp.path());
    let out = Command::new(entrypoint())
        .args(["--flag", "two words"])
        .env("SWITCHBOARD_DATA_DIR", &data)
        .env("ENTRYPOINT_BIN", &stub)
        .output()
        .expect("run entrypoint");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::metadata(&data).expect("data");
    assert_eq!((meta.uid(), meta.gid()), (APP_UID, APP_UID));
    assert_eq!(meta.mode() & 0o777, 0o700, "the data dir holds secrets");
    assert_eq!(
        std::fs::metadata(data.join("old")).expect("old").uid(),
        APP_UID
    );
    let who = std::fs::read_to_string(data.join("who")).expect("the program wrote its uid");
    assert_eq!(
        who, "uid=10001 gid=10001 groups=10001\n--flag|two words|",
        "runs as 10001 with no supplementary groups, arguments passed through"
    );
    assert_eq!(
        std::fs::metadata(data.join("who")).expect("who").uid(),
        APP_UID
    );
}

#[test]
fn entrypoint_as_a_user_runs_the_program_directly() {
    if skip_unless_root("entrypoint_as_a_user_runs_the_program_directly") {
        return;
    }
    let (tmp, data) = volume();
    std::os::unix::fs::chown(&data, Some(APP_UID), Some(APP_UID)).expect("chown");
    let stub = stub(tmp.path());
    // `docker run --user 10001`: no chown attempted, no setpriv, the program just runs.
    let out = Command::new("setpriv")
        .args([
            "--reuid=10001",
            "--regid=10001",
            "--clear-groups",
            "--",
            entrypoint().to_str().expect("path"),
            "x",
        ])
        .env("SWITCHBOARD_DATA_DIR", &data)
        .env("ENTRYPOINT_BIN", &stub)
        .output()
        .expect("run entrypoint");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let who = std::fs::read_to_string(data.join("who")).expect("who");
    assert_eq!(who, "uid=10001 gid=10001 groups=10001\nx|");
}

#[actix_rt::test]
async fn the_broker_starts_through_the_entrypoint_on_a_root_owned_volume() {
    if skip_unless_root("the_broker_starts_through_the_entrypoint_on_a_root_owned_volume") {
        return;
    }
    let (_tmp, data) = volume();
    let mut cmd = Command::new(entrypoint());
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHBOARD_") || k == "PORT" || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .env("SWITCHBOARD_DATA_DIR", &data)
        .env("ENTRYPOINT_BIN", env!("CARGO_BIN_EXE_switchboard"))
        .env("PORT", "0")
        .env("SWITCHBOARD_HOST", "127.0.0.1")
        .env("SWITCHBOARD_DEMO", "0")
        .env("SWITCHBOARD_WORKERS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("switchboard listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(30));
    // `exec` all the way down: the child's pid is the broker's, so its uid tells who runs it.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
    let _ = child.kill();
    let _ = child.wait();
    let url = url.expect("the broker did not start on a root-owned volume");
    let uid_line = status
        .expect("proc status")
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "10001"),
        "the broker must run as 10001 (real, effective, saved, fs): {uid_line}"
    );
    assert!(url.starts_with("http://127.0.0.1:"));
    // Everything the broker created (sled files, the generated admin key) belongs to 10001.
    let mut seen = 0;
    let mut stack = vec![data.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::metadata(&path).expect("meta");
            assert_eq!(
                meta.uid(),
                APP_UID,
                "{} is not owned by 10001",
                path.display()
            );
            seen += 1;
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    assert!(seen > 0, "the broker wrote nothing into its data dir");
    assert!(data.join("admin_key").exists());
}

/// Railway SIGKILLs `drainingSeconds` after SIGTERM: that must outlast the broker's worst-case
/// drain, and an overlap is useless while sled locks the volume (README "Deploying to Railway").
#[test]
fn railway_drain_outlasts_the_worst_case_shutdown_and_overlap_is_off() {
    let toml = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("railway.toml"))
        .expect("railway.toml");
    let value = |key: &str| -> u64 {
        toml.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .find_map(|l| l.split_once('=').filter(|(k, _)| k.trim() == key))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("railway.toml has no numeric {key}"))
    };
    // The drain timeout's default, from the binary itself.
    let help = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--help")
        .output()
        .expect("--help");
    let help = String::from_utf8_lossy(&help.stdout);
    let drain: u64 = help
        .split("SWITCHBOARD_DRAIN_TIMEOUT_S")
        .nth(1)
        .and_then(|rest| rest.split("[default: ").nth(1))
        .and_then(|rest| rest.split(']').next())
        .and_then(|n| n.parse().ok())
        .expect("--help names the drain timeout's default");
    // + 1 s worker grace (shutdown::WORKER_GRACE) + up to 5 s for the sled flush (main.rs).
    let worst = drain + 1 + 5;
    assert!(
        value("drainingSeconds") > worst,
        "drainingSeconds {} must exceed the worst-case drain of {worst} s",
        value("drainingSeconds")
    );
    assert_eq!(value("overlapSeconds"), 0);
}

/// `/health` is what the Dockerfile's HEALTHCHECK asks, with the same bytes (bash /dev/tcp).
#[actix_rt::test]
async fn the_dockerfile_healthcheck_passes_on_a_live_broker_and_fails_on_503() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
            .expect("Dockerfile");
    let json = dockerfile
        .split("CMD [")
        .nth(1)
        .and_then(|rest| rest.split('\n').next())
        .map(|rest| format!("[{rest}"))
        .expect("HEALTHCHECK CMD in exec form");
    let argv: Vec<String> = serde_json::from_str(&json).expect("exec form is JSON");
    let broker = Broker::start(&[]);
    let port = broker.url.rsplit(':').next().expect("port").to_string();
    let run = |port: &str| {
        Command::new(&argv[0])
            .args(&argv[1..])
            .env("PORT", port)
            .stderr(Stdio::null())
            .status()
            .expect("run healthcheck")
            .success()
    };
    let (status, _, _) = request_raw("GET", &format!("{}/health", broker.url), &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(run(&port), "healthcheck fails against a healthy broker");
    drop(broker);
    // A server answering 503 (what a draining broker's /health says) is unhealthy.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let draining_port = listener.local_addr().expect("addr").port().to_string();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut conn, _)) = listener.accept() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 21\r\n\r\n{\"status\":\"draining\"}",
            );
        }
    });
    assert!(
        !run(&draining_port),
        "healthcheck passes against a 503 /health"
    );
    let _ = server.join();
}
