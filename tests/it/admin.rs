//! `/admin/*`: validation, keys, CRUD, the URL policy.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::harness::*;

async fn total(broker: &Broker) -> u64 {
    let (status, body) = broker.admin_json("GET", "/admin/servers", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["servers"].as_array().map(|a| a.len() as u64),
        body["total"].as_u64()
    );
    body["total"].as_u64().unwrap_or(u64::MAX)
}

#[actix_rt::test]
async fn bad_registrations_are_refused_and_nothing_is_stored() {
    let m = mock();
    let broker = Broker::start(&[]);
    let url = m.url();
    let cases: Vec<(&str, String, StatusCode)> = vec![
        (
            "invalid json",
            "{\"model_name\": ".into(),
            StatusCode::BAD_REQUEST,
        ),
        ("empty body", String::new(), StatusCode::BAD_REQUEST),
        ("not an object", "[1]".into(), StatusCode::BAD_REQUEST),
        (
            "missing model_name",
            json!({"endpoint_url": url}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing endpoint_url",
            json!({"model_name": "m"}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "model_name not a string",
            json!({"model_name": 5, "endpoint_url": url}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "empty model_name",
            json!({"model_name": "  ", "endpoint_url": url}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "verify not a bool",
            json!({"model_name": "m", "endpoint_url": url, "verify": "no"}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "unknown field",
            json!({"model_name": "m", "endpoint_url": url, "modle": "x"}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "ftp url",
            json!({"model_name": "m", "endpoint_url": "ftp://example.com"}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "credentials in url",
            json!({"model_name": "m", "endpoint_url": "http://u:p@example.com"}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not a url",
            json!({"model_name": "m", "endpoint_url": "localhost:9000"}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "query string",
            json!({"model_name": "m", "endpoint_url": format!("{url}/?x=1")}).to_string(),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, body, want) in cases {
        let (status, err) = broker
            .call(
                "POST",
                "/admin/register",
                &[("x-api-key", ADMIN), ("content-type", "application/json")],
                Some(body),
            )
            .await;
        assert_eq!(status, want, "{what}: {err}");
        assert_error_shape(&err);
    }
    assert_eq!(total(&broker).await, 0);
    assert_eq!(m.stats().requests, 0, "no probe for invalid input");
}

#[actix_rt::test]
async fn admin_routes_require_the_admin_key() {
    // Each route's wrong keys come from their own address (X-Forwarded-For behind a trusted
    // proxy): 16 wrong keys from one address would trip the guessing throttle (429).
    let broker = Broker::start(&[("SWITCHBOARD_TRUST_PROXY", "1")]);
    let id = "00000000-0000-0000-0000-000000000000";
    let routes = [
        ("POST", "/admin/register".to_string()),
        ("PUT", format!("/admin/register/{id}")),
        ("DELETE", format!("/admin/register/{id}")),
        ("GET", "/admin/servers".to_string()),
        ("GET", format!("/admin/servers/{id}")),
        ("POST", format!("/admin/servers/{id}/health-check")),
        ("POST", format!("/admin/servers/{id}/activate")),
        ("GET", "/admin/stats".to_string()),
    ];
    for (i, (method, path)) in routes.iter().enumerate() {
        let ip = format!("192.0.2.{}", i + 1);
        for mut headers in [
            vec![],
            vec![("x-api-key", "wrong")],
            vec![("authorization", "Bearer wrong")],
        ] {
            headers.push(("x-forwarded-for", &ip));
            let (status, err) = broker.call(method, path, &headers, Some("{}".into())).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} {headers:?}");
            assert_error_shape(&err);
        }
    }
    let (status, _) = broker
        .call(
            "GET",
            "/admin/stats",
            &[("authorization", &format!("Bearer {ADMIN}"))],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_rt::test]
async fn unknown_ids_are_404_and_change_nothing() {
    let broker = Broker::start(&[]);
    for id in ["00000000-0000-0000-0000-000000000000", "not-a-uuid"] {
        for (method, path, body) in [
            ("GET", format!("/admin/servers/{id}"), None),
            (
                "PUT",
                format!("/admin/register/{id}"),
                Some(json!({"description": "x"})),
            ),
            ("DELETE", format!("/admin/register/{id}"), None),
            ("POST", format!("/admin/servers/{id}/health-check"), None),
            ("POST", format!("/admin/servers/{id}/activate"), None),
        ] {
            let (status, err) = broker.admin_json(method, &path, body).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
            assert_error_shape(&err);
        }
    }
}

#[actix_rt::test]
async fn failed_verification_is_503_and_stores_nothing() {
    let m = mockllm::MockServer::builder()
        .health_ok(false)
        .spawn()
        .expect("mock");
    let broker = Broker::start(&[]);
    let (status, err) = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(json!({"model_name": "m", "endpoint_url": m.url()})),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("HTTP 500"),
        "{err}"
    );
    assert_eq!(total(&broker).await, 0);
}

#[actix_rt::test]
async fn duplicate_registration_is_409() {
    let m = mock();
    let broker = Broker::start(&[]);
    broker.register("dup", &m.url()).await;
    let (status, err) = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(json!({"model_name": "dup", "endpoint_url": format!("{}/", m.url())})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(total(&broker).await, 1);
}

#[actix_rt::test]
async fn update_changes_fields_and_a_refused_update_changes_nothing() {
    let (a, b) = (mock(), mock());
    let broker = Broker::start(&[]);
    let rec = broker.register("upd", &a.url()).await;
    let id = rec["registration_id"].as_str().unwrap_or("").to_string();
    let path = format!("/admin/register/{id}");

    let (status, r) = broker
        .admin_json(
            "PUT",
            &path,
            Some(json!({"description": "lab GPU", "owner": "ana", "api_key": "k"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(
        (
            r["description"].as_str(),
            r["owner"].as_str(),
            r["has_api_key"].as_bool()
        ),
        (Some("lab GPU"), Some("ana"), Some(true))
    );

    for bad in [
        json!({"endpoint_url": "gopher://x"}),
        json!({"model_name": ""}),
        json!({"nope": 1}),
        json!({"owner": 5}),
        json!({"model_name": null}),
        json!({"endpoint_url": null}),
    ] {
        let (status, err) = broker.admin_json("PUT", &path, Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {err}");
    }
    // Moving onto a model + URL pair that is already registered: 409, as at registration.
    let other = broker.register("taken", &b.url()).await;
    let (status, err) = broker
        .admin_json(
            "PUT",
            &path,
            Some(json!({"model_name": "taken", "endpoint_url": b.url()})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    let (status, _) = broker
        .admin_json(
            "DELETE",
            &format!(
                "/admin/register/{}",
                other["registration_id"].as_str().unwrap_or("")
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let after = broker.server(&id).await;
    assert_eq!(after["endpoint_url"], a.url().as_str());
    assert_eq!(after["description"], "lab GPU");

    let (status, r) = broker
        .admin_json(
            "PUT",
            &path,
            Some(json!({"endpoint_url": b.url(), "model_name": "upd2", "api_key": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["endpoint_url"], b.url().as_str());
    assert_eq!(r["has_api_key"], false);
    assert_eq!(r["registration_id"].as_str(), Some(id.as_str()));
    let (status, _) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("upd2", false)),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(b
        .stats()
        .requests_by_path
        .contains_key("/v1/chat/completions"));
    let (status, _) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("upd", false)),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_rt::test]
async fn delete_stops_routing_at_once_and_the_url_can_register_again() {
    let m = mock();
    let broker = Broker::start(&[]);
    let rec = broker.register("del", &m.url()).await;
    let id = rec["registration_id"].as_str().unwrap_or("");
    let (status, _) = broker
        .admin_json("DELETE", &format!("/admin/register/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = broker
        .call(
            "POST",
            "/v1/chat/completions",
            &[],
            Some(chat("del", false)),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = broker
        .admin_json("GET", &format!("/admin/servers/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let again = broker.register("del", &m.url()).await;
    assert_ne!(again["registration_id"], rec["registration_id"]);
}

#[actix_rt::test]
async fn private_backends_are_refused_when_not_allowed() {
    let broker = Broker::start(&[("SWITCHBOARD_ALLOW_PRIVATE_BACKENDS", "0")]);
    for url in [
        "http://127.0.0.1:9",
        "http://localhost:9",
        "http://10.0.0.1",
        "http://169.254.169.254",
        "http://[::1]:9",
        "http://192.168.0.10:8000",
    ] {
        let (status, err) = broker
            .admin_json(
                "POST",
                "/admin/register",
                Some(json!({"model_name": "p", "endpoint_url": url})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {err}");
        assert_eq!(err["error"]["param"], "endpoint_url");
    }
    assert_eq!(total(&broker).await, 0);
}

#[actix_rt::test]
async fn public_mode_refuses_private_backends_by_default() {
    let broker = Broker::start(&[
        ("SWITCHBOARD_HOST", "0.0.0.0"),
        ("SWITCHBOARD_INSECURE_PUBLIC", "1"),
    ]);
    let url = broker.url.replace("0.0.0.0", "127.0.0.1");
    let (status, err) = request(
        "POST",
        &format!("{url}/admin/register"),
        &[("x-api-key", ADMIN)],
        Some(json!({"model_name": "p", "endpoint_url": "http://127.0.0.1:11434"}).to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("loopback"),
        "{err}"
    );
    let (status, models): (StatusCode, Value) =
        request("GET", &format!("{url}/v1/models"), &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        models["data"].as_array().map(Vec::len),
        Some(0),
        "no demo models in public mode"
    );
}

#[actix_rt::test]
async fn list_filters_and_stats() {
    let (a, b) = (mock(), mock());
    let broker = Broker::start(&[]);
    broker.register("f1", &a.url()).await;
    let (status, _) = broker
        .admin_json(
            "POST",
            "/admin/register",
            Some(json!({"model_name": "f2", "endpoint_url": b.url(), "owner": "bo"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, by_model) = broker
        .admin_json("GET", "/admin/servers?model=f1", None)
        .await;
    assert_eq!(by_model["total"], 1);
    let (_, by_owner) = broker
        .admin_json("GET", "/admin/servers?owner=bo", None)
        .await;
    assert_eq!(by_owner["servers"][0]["model_name"], "f2");
    let (_, healthy) = broker
        .admin_json("GET", "/admin/servers?status=healthy", None)
        .await;
    assert_eq!(healthy["total"], 2);
    let (status, _) = broker
        .admin_json("GET", "/admin/servers?status=bogus", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, stats) = broker.admin_json("GET", "/admin/stats", None).await;
    assert_eq!(
        (
            stats["servers"].as_u64(),
            stats["healthy"].as_u64(),
            stats["models"].as_u64()
        ),
        (Some(2), Some(2), Some(2))
    );
    let (_, one) = broker
        .admin_json("GET", "/admin/servers?model=f1", None)
        .await;
    let id = one["servers"][0]["registration_id"].as_str().unwrap_or("");
    let (status, checked) = broker
        .admin_json("POST", &format!("/admin/servers/{id}/health-check"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        checked["health_history"]
            .as_array()
            .map(|h| h.last().map(|c| c["kind"].clone())),
        Some(Some(json!("manual")))
    );
    assert!(checked["last_latency_ms"].is_u64());
}
