//! Stored state and the data dir (SPEC §8): records re-checked against the current mode's URL
//! policy at startup, the data dir's permissions, and JSON logs.

use std::time::Duration;

use awc::http::StatusCode;

use crate::harness::*;

/// Public mode may refuse short secrets; this one is long enough anywhere.
const LONG_ADMIN: &str = "test-admin-key-long-enough-for-public-mode";

#[actix_rt::test]
async fn a_loopback_backend_stored_in_local_mode_is_deactivated_in_public_mode_and_never_contacted()
{
    let m = mock();
    let mut broker = Broker::start(&[
        ("SWITCHBOARD_ADMIN_KEY", LONG_ADMIN),
        ("SWITCHBOARD_HEALTH_INTERVAL_S", "0.3"),
    ]);
    let key = [("x-api-key", LONG_ADMIN)];
    let (status, rec) = broker
        .call(
            "POST",
            "/admin/register",
            &key,
            Some(
                serde_json::json!({"model_name": "stored", "endpoint_url": m.url(), "api_key": "backend-secret"})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rec}");
    let id = rec["registration_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    broker.restart_with(&[
        ("SWITCHBOARD_HOST", "0.0.0.0"),
        ("SWITCHBOARD_INSECURE_PUBLIC", "1"),
    ]);
    let seen = m.stats().connections_total;
    // Several health intervals pass, a request names the model, an admin forces a check.
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    let (status, _) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("stored", false)),
        )
        .await;
    assert!(
        status.is_client_error() || status.is_server_error(),
        "{status}"
    );
    let (status, checked) = broker
        .call(
            "POST",
            &format!("/admin/servers/{id}/health-check"),
            &key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{checked}");
    assert_eq!(
        m.stats().connections_total,
        seen,
        "the loopback backend was contacted in public mode"
    );

    let (_, server) = broker
        .call("GET", &format!("/admin/servers/{id}"), &key, None)
        .await;
    assert_eq!(server["is_active"], false, "{server}");
    let reason = server["last_error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("URL policy") && reason.contains("loopback"),
        "{server}"
    );
    assert!(broker.logs().contains("never contacted"));
}

/// Every mode under `dir` that is not 0700 (dirs) / 0600 (files).
#[cfg(unix)]
fn loose_modes(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut loose = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("meta");
        let mode = meta.permissions().mode() & 0o777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if mode != want {
            loose.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&path).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        } else {
            files += 1;
        }
    }
    assert!(files >= 2, "sled wrote files");
    loose
}

#[cfg(unix)]
#[actix_rt::test]
async fn the_data_dir_is_0700_and_every_file_in_it_0600() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    // A fresh dir (created by the broker) and an existing 0755 one with a 0644 file.
    let fresh = tmp.path().join("fresh");
    let existing = tmp.path().join("existing");
    std::fs::create_dir(&existing).expect("mkdir");
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(existing.join("notes"), "x").expect("file");
    std::fs::set_permissions(
        existing.join("notes"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    for dir in [&fresh, &existing] {
        let d = dir.to_string_lossy().to_string();
        let broker = Broker::start(&[("SWITCHBOARD_DATA_DIR", &d), ("SWITCHBOARD_ADMIN_KEY", "")]);
        // The generated admin key file is among the files checked.
        let key = std::fs::read_to_string(dir.join("admin_key")).expect("admin key");
        let m = mock();
        let body = serde_json::json!({"model_name": "modes", "endpoint_url": m.url()});
        let (status, _) = broker
            .call(
                "POST",
                "/admin/register",
                &[("x-api-key", key.trim())],
                Some(body.to_string()),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let loose = loose_modes(dir);
        assert!(loose.is_empty(), "{d}: {loose:?}");
    }
}

/// Railway mounts volumes owned by root while the image runs unprivileged: the broker must say
/// which path, which uid, and how to fix it. Needs root (to create the root-owned dir and
/// switch uid); CI runs as root.
#[cfg(unix)]
#[test]
fn an_unwritable_data_dir_is_refused_naming_the_path_the_uid_and_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let setpriv = std::path::Path::new("/usr/bin/setpriv").exists();
    if !root || !setpriv {
        println!("skipped: needs root and setpriv (root {root}, setpriv {setpriv})");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let volume = tmp.path().join("volume");
    std::fs::create_dir(&volume).expect("mkdir");
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_switchboard"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PORT", "0")
        .env("SWITCHBOARD_DEMO", "0")
        .env("SWITCHBOARD_DATA_DIR", &volume)
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&volume.display().to_string()), "path: {text}");
    assert!(text.contains("uid 65534"), "uid: {text}");
    assert!(text.contains("chown -R 65534"), "fix: {text}");
}

/// The broker run by hand with stdout and stderr in separate files (so lines never interleave);
/// returns the process, its base URL, and the two file paths.
fn spawn_logged(
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (
    std::process::Child,
    String,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let (out, err) = (dir.join("stdout.log"), dir.join("stderr.log"));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHBOARD_") || k == "PORT" || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("PORT", port.to_string())
        .env("SWITCHBOARD_DATA_DIR", dir.join("data"))
        .env("SWITCHBOARD_DEMO", "0")
        .env("SWITCHBOARD_WORKERS", "2")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"));
    let child = cmd.spawn().expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&out)
        .unwrap_or_default()
        .contains("listening on")
    {
        assert!(std::time::Instant::now() < deadline, "did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, format!("http://127.0.0.1:{port}"), out, err)
}

#[actix_rt::test]
async fn with_json_logs_every_line_on_stdout_and_stderr_is_one_json_object() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut child, url, out, err) = spawn_logged(
        tmp.path(),
        &[
            ("SWITCHBOARD_LOG_FORMAT", "json"),
            ("SWITCHBOARD_HEALTH_INTERVL_S", "3"), // a typo: warned about
            ("RUST_LOG", "debug"),
        ],
    );
    let key = std::fs::read_to_string(tmp.path().join("data/admin_key")).expect("key");
    let m = mock();
    let body = serde_json::json!({"model_name": "jl-d1-w5", "endpoint_url": m.url()});
    let (status, _) = request(
        "POST",
        &format!("{url}/admin/register"),
        &[("x-api-key", key.trim())],
        Some(body.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // A session turn (connection, session and request ids in the logs) and a refused send.
    let (mut ws, _) = crate::wsclient::Ws::new_session(&url).await;
    ws.send(crate::wsclient::send_msg("r-json-1", "hi", &["jl-d1-w5"]))
        .await;
    let mut view = crate::wsclient::View::default();
    crate::wsclient::read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
    ws.send(crate::wsclient::send_msg(
        "r-json-2",
        "hi",
        &["no-such-model"],
    ))
    .await;
    let _ = ws.next(Duration::from_millis(500)).await;
    drop(ws);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    let mut lines = 0;
    let mut with_ids = std::collections::HashSet::new();
    for path in [&out, &err] {
        for line in std::fs::read_to_string(path).expect("log").lines() {
            lines += 1;
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", path.display()));
            let time = v["time"].as_str().unwrap_or_default();
            assert!(
                time.len() >= 20 && time.as_bytes()[10] == b'T' && time.ends_with('Z'),
                "RFC 3339 time: {line}"
            );
            for field in ["level", "target", "message"] {
                assert!(v[field].is_string(), "{field}: {line}");
            }
            for id in ["request_id", "session_id", "connection_id"] {
                if v[id].is_string() || v[id].is_u64() {
                    with_ids.insert(id);
                }
            }
        }
    }
    assert!(lines > 5, "{lines} lines");
    assert_eq!(with_ids.len(), 3, "ids as fields: {with_ids:?}");
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(stdout.contains("listening on") && stdout.contains(key.trim()));
}

#[actix_rt::test]
async fn in_public_mode_a_generated_admin_key_is_not_printed_only_its_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut child, _url, out, err) = spawn_logged(
        tmp.path(),
        &[
            ("SWITCHBOARD_HOST", "0.0.0.0"),
            ("SWITCHBOARD_INSECURE_PUBLIC", "1"),
        ],
    );
    let _ = child.kill();
    let _ = child.wait();
    let key_file = tmp.path().join("data/admin_key");
    let key = std::fs::read_to_string(&key_file).expect("key");
    let logs = std::fs::read_to_string(&out).unwrap_or_default()
        + &std::fs::read_to_string(&err).unwrap_or_default();
    assert!(!logs.contains(key.trim()), "the key was printed:\n{logs}");
    assert!(logs.contains(&key_file.display().to_string()), "{logs}");
}
