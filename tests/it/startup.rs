//! Startup: configuration errors name the variable; public mode needs credentials.

use std::process::Command;

use awc::http::StatusCode;

use crate::harness::*;

fn run(env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.env("SWITCHBOARD_DATA_DIR", dir.path())
        .env("PORT", "0")
        .env("SWITCHBOARD_DEMO", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.args(args).output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn public_mode_without_credentials_refuses_to_start() {
    let (code, text) = run(&[("SWITCHBOARD_HOST", "0.0.0.0")], &[]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("SWITCHBOARD_UI_PASSWORD") && text.contains("SWITCHBOARD_API_KEYS"),
        "{text}"
    );
}

#[test]
fn public_mode_refuses_guessable_secrets_naming_the_variable() {
    let good = [
        ("SWITCHBOARD_HOST", "0.0.0.0"),
        ("SWITCHBOARD_UI_PASSWORD", "ui-password-01"),
        ("SWITCHBOARD_API_KEYS", "client-key-000001"),
    ];
    for (var, short) in [
        ("SWITCHBOARD_ADMIN_KEY", "a"),
        ("SWITCHBOARD_API_KEYS", "client-key-000001,k2"),
        ("SWITCHBOARD_UI_PASSWORD", "pw"),
        ("SWITCHBOARD_PUSH_SECRET", "s3cret"),
    ] {
        let mut env: Vec<(&str, &str)> = good.iter().filter(|(k, _)| *k != var).copied().collect();
        env.push((var, short));
        if var == "SWITCHBOARD_PUSH_SECRET" {
            env.push(("SWITCHBOARD_PUSH_CALLBACK_URL", "http://app.example/hook"));
        }
        let (code, text) = run(&env, &[]);
        assert_eq!(code, 2, "{var}={short}: {text}");
        assert!(
            text.contains(var) && text.contains("shorter than"),
            "{var} not named: {text}"
        );
        assert!(
            !text.contains(&format!("={short}")),
            "the secret was echoed: {text}"
        );
    }
}

#[test]
fn invalid_values_fail_startup_naming_the_variable() {
    for (var, value) in [
        ("PORT", "eighty"),
        ("SWITCHBOARD_HEALTH_INTERVAL_S", "-1"),
        ("SWITCHBOARD_DEMO", "maybe"),
        ("SWITCHBOARD_MAX_RETRIES", "x"),
    ] {
        let (code, text) = run(&[(var, value)], &[]);
        assert_eq!(code, 2, "{var}={value}: {text}");
        assert!(text.contains(var), "{var}={value} not named: {text}");
    }
}

#[test]
fn help_lists_every_variable_with_defaults() {
    let (code, text) = run(&[], &["--help"]);
    assert_eq!(code, 0);
    for var in [
        "PORT",
        "SWITCHBOARD_HOST",
        "SWITCHBOARD_DATA_DIR",
        "SWITCHBOARD_HEALTH_INTERVAL_S",
        "SWITCHBOARD_MAX_CONSECUTIVE_FAILURES",
        "SWITCHBOARD_EVENT_BUFFER",
    ] {
        assert!(text.contains(var), "--help lacks {var}");
    }
    assert!(text.contains("[default: 8080]"));
}

#[actix_rt::test]
async fn unknown_variable_is_warned_and_generated_admin_key_is_private() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_string_lossy().to_string();
    let mut broker = Broker::start(&[
        ("SWITCHBOARD_HEALTH_INTERVL_S", "3"),
        ("SWITCHBOARD_ADMIN_KEY", ""),
        ("SWITCHBOARD_DATA_DIR", &dir),
    ]);
    assert!(
        broker.logs().contains("SWITCHBOARD_HEALTH_INTERVL_S"),
        "{}",
        broker.logs()
    );
    let key_file = tmp.path().join("admin_key");
    let key = std::fs::read_to_string(&key_file)
        .expect("admin key file")
        .trim()
        .to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }
    assert!(broker.logs().contains(&key), "printed once on generation");
    let (status, _) = broker
        .call("GET", "/admin/stats", &[("x-api-key", &key)], None)
        .await;
    assert_eq!(status, StatusCode::OK);
    broker.restart();
    assert!(!broker.logs().contains(&key), "not printed again");
    let (status, _) = broker
        .call("GET", "/admin/stats", &[("x-api-key", &key)], None)
        .await;
    assert_eq!(status, StatusCode::OK, "same key after restart");
}

#[actix_rt::test]
async fn health_reports_backends() {
    let m = mock();
    let broker = Broker::start(&[]);
    broker.register("h", &m.url()).await;
    let (status, body) = broker.call("GET", "/health", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["backends"]["total"], 1);
    assert_eq!(body["backends"]["healthy"], 1);
    assert!(body["version"].is_string() && body["uptime_s"].is_u64());
}

/// The README's first command, read from the README itself.
fn readme_run_command() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let block = readme
        .split("```sh")
        .nth(1)
        .expect("a sh block on the first screen");
    block
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .split('#')
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

#[actix_rt::test]
async fn the_readme_first_command_runs_local_mode_with_the_demo_models() {
    // The first command is `cargo run --release`: the binary with no configuration at all.
    assert_eq!(readme_run_command(), "cargo run --release");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .unwrap_or_default();
    let first_screen: String = readme.lines().take(25).collect::<Vec<_>>().join("\n");
    assert!(
        first_screen.contains("bash .ci/run"),
        "the test command is on the first screen"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SWITCHBOARD_") || k == "PORT" {
            cmd.env_remove(k);
        }
    }
    // Only what a test must change: a free port and a scratch working directory (./data).
    cmd.current_dir(dir.path())
        .arg("--port")
        .arg("0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let url = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix("switchboard listening on ")
                    .map(str::to_string)
            })
    })
    .join()
    .ok()
    .flatten()
    .expect("listening line");
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "local mode binds loopback: {url}"
    );
    let (_, models) = request("GET", &format!("{url}/v1/models"), &[], None).await;
    let ids: Vec<String> = models["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    for demo in [
        "demo-fast",
        "demo-slow-thinker",
        "demo-tools",
        "demo-flaky",
        "demo-stalls",
    ] {
        assert!(ids.iter().any(|i| i == demo), "{demo} missing from {ids:?}");
    }
    assert!(
        dir.path().join("data").join("admin_key").exists(),
        "data under ./data by default"
    );
}

#[actix_rt::test]
async fn local_mode_serves_the_demo_models() {
    let broker = Broker::start(&[("SWITCHBOARD_DEMO", "1")]);
    let (_, models) = broker.call("GET", "/v1/models", &[], None).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        ids.len() >= 3 && ids.iter().all(|i| i.starts_with("demo-")),
        "{models}"
    );
    let (status, body) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat(ids[0], false)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[actix_rt::test]
async fn public_mode_starts_cleanly_with_credentials() {
    let broker = Broker::start(&[
        ("SWITCHBOARD_HOST", "0.0.0.0"),
        ("SWITCHBOARD_UI_PASSWORD", "ui-password-01"),
        ("SWITCHBOARD_API_KEYS", "client-key-000001"),
    ]);
    let url = broker.url.replace("0.0.0.0", "127.0.0.1");
    let (status, health) = request("GET", &format!("{url}/health"), &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        health["backends"]["total"], 0,
        "no demo backend in public mode"
    );
    assert!(broker.logs().contains("public mode"), "{}", broker.logs());
}
