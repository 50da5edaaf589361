//! Backup and restore of the registry (SPEC §3.2.1): export, import, all-or-nothing validation.

use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;

fn servers(doc: &Value) -> Vec<Value> {
    doc["servers"].as_array().cloned().unwrap_or_default()
}

fn by_model<'a>(list: &'a [Value], model: &str) -> &'a Value {
    list.iter()
        .find(|s| s["model_name"] == model)
        .unwrap_or_else(|| panic!("{model} in {list:?}"))
}

async fn ids(broker: &Broker) -> Vec<String> {
    let (_, list) = broker.admin_json("GET", "/admin/servers", None).await;
    servers(&list)
        .iter()
        .filter_map(|s| s["registration_id"].as_str().map(str::to_string))
        .collect()
}

#[actix_rt::test]
async fn export_then_delete_all_then_import_restores_every_record() {
    let (a, b) = (mock(), mock());
    let broker = Broker::start(&[("SWITCHBOARD_HEALTH_INTERVAL_S", "0.5")]);
    for body in [
        json!({"model_name": "m1", "endpoint_url": a.url(), "api_key": "sk-one",
               "owner": "lab", "description": "first", "upstream_model": "m1:8b"}),
        json!({"model_name": "m2", "endpoint_url": format!("{}/v1", b.url()),
               "health_check": "passive"}),
        json!({"model_name": "m3", "endpoint_url": a.url(), "max_concurrency": 4}),
    ] {
        let (status, r) = broker
            .admin_json("POST", "/admin/register", Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{r}");
    }

    let (status, _) = broker
        .call("GET", "/admin/export", &[("x-api-key", "wrong")], None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, plain) = broker.admin_json("GET", "/admin/export", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(plain["version"], 1);
    assert!(plain["exported_at"].as_u64().is_some(), "{plain}");
    assert_eq!(servers(&plain).len(), 3);
    assert!(
        servers(&plain).iter().all(|s| s.get("api_key").is_none()),
        "no keys without include_keys: {plain}"
    );
    let (_, doc) = broker
        .admin_json("GET", "/admin/export?include_keys=true", None)
        .await;
    let exported = servers(&doc);
    let m1 = by_model(&exported, "m1");
    assert_eq!(m1["api_key"], "sk-one");
    for (field, value) in [
        ("endpoint_url", json!(a.url())),
        ("owner", json!("lab")),
        ("description", json!("first")),
        ("upstream_model", json!("m1:8b")),
        ("health_check", json!("models")),
        ("is_active", json!(true)),
        ("max_concurrency", Value::Null),
    ] {
        assert_eq!(m1.get(field), Some(&value), "{field} in {m1}");
    }
    assert_eq!(by_model(&exported, "m2")["health_check"], "passive");
    assert_eq!(by_model(&exported, "m3")["max_concurrency"], 4);

    for id in ids(&broker).await {
        let (status, _) = broker
            .admin_json("DELETE", &format!("/admin/register/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    assert!(ids(&broker).await.is_empty());

    let (status, summary) = broker
        .admin_json("POST", "/admin/import", Some(doc.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary, json!({"created": 3, "skipped": 0}));
    let (_, again) = broker
        .admin_json("GET", "/admin/export?include_keys=true", None)
        .await;
    let mut before = exported.clone();
    let mut after = servers(&again);
    for list in [&mut before, &mut after] {
        list.sort_by_key(|s| s["model_name"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(before, after, "every field restored");
    // The restored key is the one sent upstream.
    let (status, _) = broker
        .call("POST", "/v1/chat/completions", &[], Some(chat("m1", false)))
        .await;
    assert_eq!(status, StatusCode::OK);
    let last = a.stats().last_headers.last().cloned().unwrap_or_default();
    assert_eq!(last["authorization"], "Bearer sk-one");
    // Imported servers are health-checked as usual afterwards (no verify step).
    let (_, list) = broker.admin_json("GET", "/admin/servers", None).await;
    let m3 = by_model(&servers(&list), "m3")["registration_id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let checked = wait_for(Duration::from_secs(6), || async {
        broker.server(&m3).await["health_status"] == "healthy"
    })
    .await;
    assert!(checked.is_some(), "imported server was health-checked");

    // A repeated import skips everything.
    let (status, summary) = broker
        .admin_json("POST", "/admin/import", Some(doc.clone()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(summary, json!({"created": 0, "skipped": 3}));
    assert_eq!(ids(&broker).await.len(), 3);
}

#[actix_rt::test]
async fn an_import_with_one_bad_entry_stores_nothing_and_names_it() {
    let a = mock();
    let broker = Broker::start(&[]);
    let good = json!({"model_name": "new1", "endpoint_url": a.url()});
    let cases = [
        (
            json!({"model_name": "new2", "endpoint_url": "ftp://example.com"}),
            "servers[1].endpoint_url",
        ),
        (
            json!({"model_name": "new2", "endpoint_url": "http://u:p@example.com"}),
            "servers[1].endpoint_url",
        ),
        (
            json!({"model_name": 7, "endpoint_url": a.url()}),
            "servers[1].model_name",
        ),
        (
            json!({"model_name": "new2", "endpoint_url": a.url(), "health_check": "often"}),
            "servers[1].health_check",
        ),
    ];
    for (bad, param) in cases {
        let doc = json!({"version": 1, "servers": [good, bad, good]});
        let (status, body) = broker.admin_json("POST", "/admin/import", Some(doc)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_error_shape(&body);
        assert_eq!(body["error"]["param"], param, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(param)),
            "{body}"
        );
        assert!(ids(&broker).await.is_empty(), "nothing stored");
    }
    // The same document without the bad entry goes in, its duplicate skipped.
    let (status, summary) = broker
        .admin_json(
            "POST",
            "/admin/import",
            Some(json!({"version": 1, "servers": [good, good]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(summary, json!({"created": 1, "skipped": 1}));
}
