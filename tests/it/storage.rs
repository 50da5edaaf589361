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
