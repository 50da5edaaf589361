//! Durability: acknowledged writes survive `kill -9`; a restart resumes health checking.

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::json;

use crate::harness::*;

#[actix_rt::test]
async fn registrations_survive_kill9_and_restart() {
    let (a, b) = (mock(), mock());
    let mut broker = Broker::start(&[("SWITCHBOARD_HEALTH_INTERVAL_S", "0.5")]);
    let ra = broker.register("keep", &a.url()).await;
    let (status, rb) = broker
        .admin_json("POST", "/admin/register", Some(json!({"model_name": "keep2", "endpoint_url": b.url(), "api_key": "sk-b", "owner": "lab"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let deleted = broker.register("gone", &a.url()).await;
    let (status, _) = broker
        .admin_json(
            "DELETE",
            &format!(
                "/admin/register/{}",
                deleted["registration_id"].as_str().unwrap_or("")
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    broker.kill9();
    broker.restart();

    let (_, list) = broker.admin_json("GET", "/admin/servers", None).await;
    assert_eq!(list["total"], 2, "{list}");
    let ids: Vec<&str> = list["servers"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|r| r["registration_id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(ids.contains(&ra["registration_id"].as_str().unwrap_or("-")));
    assert!(ids.contains(&rb["registration_id"].as_str().unwrap_or("-")));
    let kept = list["servers"]
        .as_array()
        .and_then(|s| s.iter().find(|r| r["model_name"] == "keep2").cloned())
        .unwrap_or_default();
    assert_eq!(
        (kept["has_api_key"].as_bool(), kept["owner"].as_str()),
        (Some(true), Some("lab"))
    );

    let (status, _) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("keep2", false)),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        b.stats()
            .last_headers
            .last()
            .map(|h| h["authorization"].clone()),
        Some(json!("Bearer sk-b"))
    );

    // Health checking resumed: new checks appear in the history after the restart.
    let before = kept["last_checked_at"].as_u64().unwrap_or(0);
    let id = ra["registration_id"].as_str().unwrap_or("").to_string();
    let resumed = wait_for(Duration::from_secs(6), || async {
        let (_, r) = broker
            .admin_json("GET", &format!("/admin/servers/{id}"), None)
            .await;
        r["last_checked_at"].as_u64().unwrap_or(0) > before
    })
    .await;
    assert!(resumed.is_some(), "no health check after restart");
}
