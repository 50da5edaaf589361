//! Thread sessions over WebSocket: fan-out, tool calls, failures, cancel, history, resume.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::*;
use crate::wsclient::*;

const PROMPT: &str = "tell me something";

async fn broker_with(models: &[&str], env: &[(&str, &str)]) -> (Broker, mockllm::MockHandle) {
    let m = mock();
    let broker = Broker::start(env);
    for model in models {
        broker.register(model, &m.url()).await;
    }
    (broker, m)
}

fn expected(model: &str) -> String {
    mockllm::reply_text(model, PROMPT)
}

#[actix_rt::test]
async fn a_turn_fans_out_to_three_models_that_stream_independently() {
    let models = ["alpha-d5-w30", "beta-d40-w30", "gamma-ttft600-d10-w20"];
    let (broker, _m) = broker_with(&models, &[]).await;
    let mut ws = Ws::connect(&broker.url).await;
    let session = ws.hello_new().await;
    assert_eq!(session["resumed"], false);
    assert!(session.get("id").is_none(), "session event has no id");
    assert!(session["models_available"]
        .as_array()
        .is_some_and(|a| a.len() == 3));

    ws.send(send_msg("r1", PROMPT, &models)).await;
    let mut view = View::default();
    read_to_complete(&mut ws, &mut view, Duration::from_secs(20)).await;

    let ids: Vec<u64> = view
        .events
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids strictly increase by one: {ids:?}"
    );
    assert_eq!(ids[0], 1);
    assert_eq!(view.events[0]["type"], "ack");
    assert_eq!(
        view.events.last().map(|e| e["type"].clone()),
        Some(json!("complete"))
    );
    for model in models {
        assert_eq!(view.text.get(model), Some(&expected(model)), "{model} text");
        let done = view.of("done", Some(model));
        assert_eq!(done.len(), 1);
        let d = done[0];
        assert!(
            d["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
            "{d}"
        );
        assert_eq!(d["usage"]["estimated"], false);
        assert!(d["ttft_ms"].as_u64().is_some() && d["total_ms"].as_u64().is_some());
        assert_eq!(d["finish_reason"], "stop");
        assert_eq!(view.of("start", Some(model)).len(), 1);
        assert_eq!(view.of("ttft", Some(model)).len(), 1);
        for e in view.events.iter().filter(|e| e["model"] == model) {
            assert_eq!(e["request_id"], "r1");
            assert!(e["ts"].as_u64().is_some());
        }
    }
    // No lockstep: the fast model finished before the slow thinker produced its first token.
    let pos = |kind: &str, model: &str| {
        view.events
            .iter()
            .position(|e| e["type"] == kind && e["model"] == model)
    };
    assert!(
        pos("done", models[0]) < pos("ttft", models[2]),
        "fast model waited for the slow one"
    );
    let ttft_slow = view.of("ttft", Some(models[2]))[0]["ms"]
        .as_u64()
        .unwrap_or(0);
    assert!(ttft_slow >= 550, "slow model ttft {ttft_slow}");
}

#[actix_rt::test]
async fn tool_calls_of_both_styles_become_start_end_pairs() {
    let models = ["t-tools", "t-ollamatools"];
    let (broker, _m) = broker_with(&models, &[]).await;
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    ws.send(send_msg("r1", "weather?", &models)).await;
    let mut view = View::default();
    read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
    for (model, ids, names) in [
        ("t-tools", ["call_1", "call_2"], ["get_weather", "get_time"]),
        (
            "t-ollamatools",
            ["call_a", "call_b"],
            ["get_weather", "get_time"],
        ),
    ] {
        let starts = view.of("tool_start", Some(model));
        let ends = view.of("tool_end", Some(model));
        assert_eq!(starts.len(), 2, "{model}: {starts:?}");
        assert_eq!(ends.len(), 2, "{model}: {ends:?}");
        for i in 0..2 {
            assert_eq!(starts[i]["tool_call_id"], ids[i], "{model}");
            let end = ends
                .iter()
                .find(|e| e["tool_call_id"] == ids[i])
                .expect("matching end");
            assert_eq!(end["name"], names[i]);
            let args: Value = serde_json::from_str(end["arguments"].as_str().unwrap_or(""))
                .expect("arguments are JSON");
            assert!(args.is_object());
            assert!(end["ms"].as_u64().is_some());
            let (s_pos, e_pos) = (
                view.events
                    .iter()
                    .position(|e| e["type"] == "tool_start" && e["tool_call_id"] == ids[i]),
                view.events
                    .iter()
                    .position(|e| e["type"] == "tool_end" && e["tool_call_id"] == ids[i]),
            );
            assert!(s_pos < e_pos);
        }
        assert_eq!(
            view.of("done", Some(model))[0]["finish_reason"],
            "tool_calls"
        );
    }
}

#[actix_rt::test]
async fn one_failing_model_gets_an_error_while_the_others_finish() {
    let models = ["good-d5", "bad-error500"];
    let (broker, _m) = broker_with(&models, &[]).await;
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    ws.send(send_msg(
        "r1",
        PROMPT,
        &["good-d5", "bad-error500", "unregistered"],
    ))
    .await;
    let mut view = View::default();
    read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
    assert_eq!(view.text.get("good-d5"), Some(&expected("good-d5")));
    assert_eq!(view.of("done", Some("good-d5")).len(), 1);
    let bad = view.of("error", Some("bad-error500"));
    assert_eq!(bad.len(), 1);
    assert!(
        bad[0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("HTTP 500"),
        "{}",
        bad[0]
    );
    assert_eq!(bad[0]["retryable"], true);
    let unknown = view.of("error", Some("unregistered"));
    assert_eq!(unknown[0]["code"], "model_not_found");
    assert!(bad[0]["id"].as_u64().is_some(), "turn errors are numbered");
}

#[actix_rt::test]
async fn a_backend_that_stops_sending_times_out_while_a_steady_one_finishes() {
    // Idle limit 0.6 s: tokens every 100 ms keep a stream alive (the idle timer is re-armed
    // when it fires after a chunk), a 3 s gap after the first token ends the other one.
    let models = ["steady-d100-w8", "stall-d3000-w3"];
    let (broker, _m) = broker_with(&models, &[("SWITCHBOARD_IDLE_TIMEOUT_S", "0.6")]).await;
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    let started = Instant::now();
    ws.send(send_msg("r1", PROMPT, &models)).await;
    let mut view = View::default();
    read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
    assert_eq!(
        view.text.get("steady-d100-w8"),
        Some(&expected("steady-d100-w8"))
    );
    assert_eq!(view.of("done", Some("steady-d100-w8")).len(), 1);
    let stalled = view.of("error", Some("stall-d3000-w3"));
    assert_eq!(stalled.len(), 1, "{:?}", view.events);
    assert_eq!(stalled[0]["code"], "timeout", "{}", stalled[0]);
    assert!(
        !view.of("token", Some("stall-d3000-w3")).is_empty(),
        "the first token came before the silence"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "ended by the idle limit, not the backend: {:?}",
        started.elapsed()
    );
}

#[actix_rt::test]
async fn cancel_ends_the_stream_within_50ms_closes_upstream_and_keeps_the_partial_answer() {
    let model = "c-spaced-w200";
    let (broker, m) = broker_with(&[model], &[]).await;
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    ws.send(send_msg("r1", PROMPT, &[model])).await;
    let mut view = View::default();
    while view.of("token", None).len() < 4 {
        let ev = ws.event().await;
        view.apply(&ev);
    }
    let sent_at = Instant::now();
    let sent_ms = now_ms();
    ws.send(json!({"type": "cancel", "request_id": "r1"})).await;
    loop {
        let ev = ws.event().await;
        view.apply(&ev);
        if ev["type"] == "cancelled" {
            break;
        }
    }
    let took = sent_at.elapsed();
    assert!(took < Duration::from_millis(50), "cancelled after {took:?}");
    read_to_complete(&mut ws, &mut view, Duration::from_secs(5)).await;
    assert_eq!(view.of("cancelled", Some(model)).len(), 1);
    assert!(view.of("done", Some(model)).is_empty());
    wait_for(Duration::from_secs(2), || async {
        !m.stats().aborts.is_empty()
    })
    .await;
    let abort = m.stats().aborts.first().cloned().expect("upstream closed");
    assert!(
        abort.at_ms.saturating_sub(sent_ms) < 100,
        "upstream closed {} ms after cancel",
        abort.at_ms - sent_ms
    );
    let partial = view.text.get(model).cloned().unwrap_or_default();
    assert!(!partial.is_empty() && partial.len() < expected(model).len());

    // The partial answer is history: the next turn's upstream request carries it.
    ws.send(send_msg("r2", "and then?", &[model])).await;
    loop {
        let ev = ws.event().await;
        if ev["type"] == "start" {
            break;
        }
    }
    let last = m
        .stats()
        .last_requests
        .last()
        .cloned()
        .expect("second request");
    let msgs = last["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(msgs.len(), 3, "{last}");
    assert_eq!(msgs[1]["role"], "assistant");
    assert!(
        partial.starts_with(msgs[1]["content"].as_str().unwrap_or("-"))
            || msgs[1]["content"].as_str() == Some(partial.as_str())
    );
    ws.send(json!({"type": "cancel", "request_id": "r2"})).await;
}

#[actix_rt::test]
async fn second_turn_carries_each_models_own_history() {
    let models = ["h-one", "h-two"];
    let (broker, m) = broker_with(&models, &[]).await;
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    ws.send(send_msg("t1", "first question", &models)).await;
    let mut view = View::default();
    read_to_complete(&mut ws, &mut view, Duration::from_secs(10)).await;
    ws.send(send_msg("t2", "second question", &models)).await;
    let mut view2 = View::default();
    read_to_complete(&mut ws, &mut view2, Duration::from_secs(10)).await;
    let reqs = m.stats().last_requests;
    for model in models {
        let req = reqs
            .iter()
            .rev()
            .find(|r| r["model"] == model)
            .expect("request");
        let msgs = req["messages"].as_array().cloned().unwrap_or_default();
        let pairs: Vec<(String, String)> = msgs
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap_or("").to_string(),
                    m["content"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("user".to_string(), "first question".to_string()),
                (
                    "assistant".to_string(),
                    mockllm::reply_text(model, "first question")
                ),
                ("user".to_string(), "second question".to_string()),
            ]
        );
        assert_eq!(req["stream_options"]["include_usage"], true);
    }
}

#[actix_rt::test]
async fn a_second_send_while_busy_is_refused_and_garbage_keeps_the_connection() {
    let model = "busy-spaced-w30";
    let (broker, _m) = broker_with(&[model], &[]).await;
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    ws.send(send_msg("r1", PROMPT, &[model])).await;
    ws.send(send_msg("r2", PROMPT, &[model])).await;
    ws.send_text("{not json".into()).await;
    ws.send(json!({"type": "dance"})).await;
    ws.send(json!({"type": "ping"})).await;
    let (mut busy, mut invalid, mut pong) = (None, 0, false);
    while busy.is_none() || invalid < 2 || !pong {
        let ev = ws.event().await;
        match ev["type"].as_str() {
            Some("error") if ev["code"] == "busy" => busy = Some(ev.clone()),
            Some("error") if ev["code"] == "invalid_message" => {
                assert!(ev.get("id").is_none());
                invalid += 1;
            }
            Some("pong") => pong = true,
            _ => {}
        }
    }
    assert_eq!(busy.map(|b| b["request_id"].clone()), Some(json!("r2")));
    ws.send(json!({"type": "cancel", "request_id": "r1"})).await;
    let mut view = View::default();
    read_to_complete(&mut ws, &mut view, Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn clear_empties_the_history() {
    let model = "clr";
    let (broker, m) = broker_with(&[model], &[]).await;
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    ws.send(send_msg("t1", "one", &[model])).await;
    read_to_complete(&mut ws, &mut View::default(), Duration::from_secs(5)).await;
    ws.send(json!({"type": "clear"})).await;
    ws.send(send_msg("t2", "two", &[model])).await;
    read_to_complete(&mut ws, &mut View::default(), Duration::from_secs(5)).await;
    let last = m.stats().last_requests.last().cloned().unwrap_or_default();
    assert_eq!(last["messages"].as_array().map(Vec::len), Some(1), "{last}");
}

#[actix_rt::test]
async fn upstream_connections_are_reused_across_turns() {
    let model = "reuse-d2";
    let (broker, m) = broker_with(&[model], &[]).await;
    let mut ws = Ws::connect(&broker.url).await;
    ws.hello_new().await;
    ws.send(send_msg("t1", "one", &[model])).await;
    read_to_complete(&mut ws, &mut View::default(), Duration::from_secs(5)).await;
    let after_first = m.stats().connections_total;
    for i in 2..5 {
        ws.send(send_msg(&format!("t{i}"), "again", &[model])).await;
        read_to_complete(&mut ws, &mut View::default(), Duration::from_secs(5)).await;
    }
    // The body is read to its end after `[DONE]`, so awc pools the connection.
    assert_eq!(
        m.stats().connections_total,
        after_first,
        "a new upstream connection per turn"
    );
}
