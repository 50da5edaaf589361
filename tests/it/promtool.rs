//! `/metrics` is valid Prometheus text by Prometheus's own checker, and carries the standard
//! `process_*` series and sub-millisecond latency buckets.

use std::io::Write;
use std::process::{Command, Stdio};

use awc::http::StatusCode;

use crate::harness::*;
use crate::wsclient::*;

#[actix_rt::test]
async fn metrics_pass_promtool_and_carry_process_series() {
    let m = mock();
    // Push enabled (its callback is never called here) so its families are rendered too.
    let callback = format!("{}/callback", m.url());
    let broker = Broker::start(&[
        ("SWITCHBOARD_PUSH_CALLBACK_URL", &callback),
        ("SWITCHBOARD_PUSH_SECRET", "push-secret-for-tests"),
    ]);
    let rec = broker.register("met", &m.url()).await;
    let id = rec["registration_id"].as_str().unwrap_or("").to_string();
    // A stream without usage: the broker estimates its tokens.
    let (status, _, _) = request_raw(
        "POST",
        &format!("{}/v1/chat/completions", broker.url),
        &[],
        Some(chat("met", true)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("met", false)),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    ws.send(send_msg("r1", "hi", &["met"])).await;
    read_to_complete(
        &mut ws,
        &mut View::default(),
        std::time::Duration::from_secs(5),
    )
    .await;

    let (status, _, body) = request_raw(
        "GET",
        &format!("{}/metrics", broker.url),
        &[("x-api-key", ADMIN)],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body).to_string();
    for series in [
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_start_time_seconds ",
        "switchboard_push_connections_open ",
        "switchboard_push_connections_total ",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(series)),
            "missing {series}"
        );
    }
    assert!(
        text.contains("switchboard_request_duration_seconds_bucket{route=\"/v1/chat/completions\",le=\"0.0001\"}"),
        "sub-millisecond buckets"
    );

    let tokens = |kind: &str, estimated: bool| -> f64 {
        let key = format!("switchboard_tokens_total{{model=\"met\",backend=\"{id}\",kind=\"{kind}\",estimated=\"{estimated}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("missing {key}"))
    };
    // Reported: the JSON answer's usage and the session turn's final usage chunk.
    assert!(tokens("prompt", false) > 0.0);
    assert!(tokens("completion", false) > 0.0);
    // Estimated: the stream that carried no usage.
    assert!(tokens("completion", true) > 0.0);
    assert!(tokens("prompt", true) > 0.0);

    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("NOTE: promtool is not installed (Debian package `prometheus`); .ci/run installs it. Skipping its check.");
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
