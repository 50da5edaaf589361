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
