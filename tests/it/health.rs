//! The health supervisor: active checks, deactivation, recovery, logging.

use std::time::Duration;

use awc::http::StatusCode;

use crate::harness::*;

#[actix_rt::test]
async fn failing_backend_leaves_rotation_is_deactivated_and_comes_back() {
    let (sick, fine) = (mock(), mock());
    // interval 0.4 s, timeout 0.3 s: "leaves the rotation within interval + timeout".
    let broker = Broker::start(&[
        ("SWITCHBOARD_HEALTH_INTERVAL_S", "0.4"),
        ("SWITCHBOARD_HEALTH_TIMEOUT_S", "0.3"),
        ("SWITCHBOARD_MAX_CONSECUTIVE_FAILURES", "3"),
    ]);
    let rec = broker.register("hm", &sick.url()).await;
    let good = broker.register("hm", &fine.url()).await;
    let id = rec["registration_id"].as_str().unwrap_or("").to_string();
    // Let the first scheduled checks run so the regular cadence is in force.
    actix_rt::time::sleep(Duration::from_millis(3500)).await;

    sick.set_health(false);
    let left = wait_for(Duration::from_secs(5), || async {
        broker.server(&id).await["health_status"] == "unhealthy"
    })
    .await
    .expect("marked unhealthy");
    assert!(
        left <= Duration::from_millis(400 * 11 / 10 + 300 + 150),
        "left the rotation after {left:?}"
    );
    for _ in 0..4 {
        let (status, headers, _) = request_raw(
            "POST",
            &format!("{}/v1/chat/completions", broker.url),
            &[],
            Some(chat("hm", false)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers
                .get("x-switchboard-backend")
                .and_then(|v| v.to_str().ok()),
            good["registration_id"].as_str()
        );
    }

    wait_for(Duration::from_secs(5), || async {
        broker.server(&id).await["is_active"] == false
    })
    .await
    .expect("deactivated at the max");
    let r = broker.server(&id).await;
    assert_eq!(r["consecutive_failures"], 3, "{r}");
    assert!(
        r["last_error"].as_str().unwrap_or("").contains("HTTP 500"),
        "{r}"
    );
    let (_, models) = broker.call("GET", "/v1/models", &[], None).await;
    assert_eq!(
        models["data"][0]["backends"], 1,
        "a deactivated server is not counted: {models}"
    );

    sick.set_health(true);
    // Deactivated servers are probed every 10 intervals (4 s here).
    wait_for(Duration::from_secs(8), || async {
        let r = broker.server(&id).await;
        r["is_active"] == true && r["health_status"] == "healthy"
    })
    .await
    .expect("reactivated after recovery");

    let needles = [
        "healthy -> unhealthy",
        "deactivated after 3 consecutive failed checks",
        "reactivated",
        "HTTP 500",
    ];
    // The log line can land a moment after the record shows the change (busy machine).
    wait_for(Duration::from_secs(3), || async {
        let logs = broker.logs();
        needles.iter().all(|n| logs.contains(n))
    })
    .await;
    let logs = broker.logs();
    for needle in needles {
        assert!(logs.contains(needle), "log lacks {needle:?}:\n{logs}");
    }
}

#[actix_rt::test]
async fn activate_reenables_a_deactivated_server() {
    let m = mock();
    let broker = Broker::start(&[
        ("SWITCHBOARD_HEALTH_INTERVAL_S", "0.3"),
        ("SWITCHBOARD_MAX_CONSECUTIVE_FAILURES", "1"),
    ]);
    let rec = broker.register("act", &m.url()).await;
    let id = rec["registration_id"].as_str().unwrap_or("").to_string();
    m.set_health(false);
    wait_for(Duration::from_secs(6), || async {
        broker.server(&id).await["is_active"] == false
    })
    .await
    .expect("deactivated");
    m.set_health(true);
    let (status, r) = broker
        .admin_json("POST", &format!("/admin/servers/{id}/activate"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r["is_active"], true);
    wait_for(Duration::from_secs(3), || async {
        broker.server(&id).await["health_status"] == "healthy"
    })
    .await
    .expect("healthy after activation");
}
