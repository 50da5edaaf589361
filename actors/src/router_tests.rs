//! Unit tests of the routing decisions and the queue, without sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::*;
use crate::affinity::AffinityMap;
use crate::prefix::PromptSig;
use crate::routing::{BackendHandle, RouteError, RoutingTable};
use crate::routing_policy::RouterSettings;

fn backend(url: &str, limit: Option<u32>) -> Arc<BackendHandle> {
    Arc::new(BackendHandle::new(Uuid::new_v4(), "m".into(), url, None).with_max_concurrency(limit))
}

fn table(policy: RoutingPolicy, backends: &[Arc<BackendHandle>]) -> RoutingTable {
    let t = RoutingTable::new(RouterSettings {
        policy,
        queue_max: 4,
        queue_timeout: Duration::from_millis(300),
        affinity_slack: 2,
    });
    t.rebuild(backends.to_vec());
    t
}

fn req<'a>(thread: Option<u64>, prompt: Option<&'a PromptSig>) -> RouteRequest<'a> {
    RouteRequest {
        model: "m",
        thread,
        prompt,
        exclude: &[],
    }
}

fn now(t: &RoutingTable, r: &RouteRequest<'_>) -> Routed {
    t.try_route(r).unwrap().expect("a free slot")
}

#[test]
fn least_loaded_wins_and_ties_rotate() {
    let (a, b) = (backend("http://a", Some(4)), backend("http://b", Some(2)));
    let t = table(RoutingPolicy::LeastLoaded, &[a.clone(), b.clone()]);
    // Ties (both empty) rotate between the two.
    let first = now(&t, &req(None, None));
    drop(first);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(now(&t, &req(None, None)).guard.backend().base_url.clone());
    }
    assert_eq!(seen.len(), 2);
    // a: 1/4 loaded, b: 1/2 → a wins twice (2/4 ties with 1/2 → rotation).
    let _ga = a.try_acquire().unwrap();
    let _gb = b.try_acquire().unwrap();
    let r = now(&t, &req(None, None));
    assert_eq!(r.guard.backend().id, a.id);
    assert_eq!(r.kind, RouteKind::LeastLoaded);
}

#[test]
fn a_backend_at_its_limit_takes_nothing_and_slots_never_overshoot() {
    let a = backend("http://a", Some(3));
    let t = Arc::new(table(RoutingPolicy::Full, std::slice::from_ref(&a)));
    let guards: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                let t = Arc::clone(&t);
                s.spawn(move || {
                    (0..50)
                        .filter_map(|_| t.try_route(&req(None, None)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(guards.len(), 3);
    assert_eq!(a.in_flight(), 3);
    assert!(t.try_route(&req(None, None)).unwrap().is_none());
    drop(guards);
    assert_eq!(a.in_flight(), 0);
}

#[tokio::test]
async fn queued_requests_are_served_in_order_as_slots_free() {
    let a = backend("http://a", Some(1));
    let t = Arc::new(table(RoutingPolicy::Full, std::slice::from_ref(&a)));
    let held = now(&t, &req(None, None));
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (t, order) = (Arc::clone(&t), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let r = t.route(&req(None, None)).await.unwrap();
            order.lock().push(i);
            assert!(r.waited.is_some());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(t.queue_depths(), vec![("m".to_string(), 3)]);
    drop(held);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*order.lock(), vec![0, 1, 2]);
    assert_eq!(t.queue_depths(), vec![("m".to_string(), 0)]);
}

#[tokio::test]
async fn a_full_queue_and_a_timeout_are_busy() {
    let a = backend("http://a", Some(1));
    let t = Arc::new(table(RoutingPolicy::Full, std::slice::from_ref(&a)));
    let _held = now(&t, &req(None, None));
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let t = Arc::clone(&t);
            tokio::spawn(async move { t.route(&req(None, None)).await.err() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        t.route(&req(None, None)).await.err(),
        Some(RouteError::Busy {
            retry_after_s: BUSY_RETRY_AFTER_S,
            timed_out: false
        })
    );
    for w in waiting {
        assert_eq!(
            w.await.unwrap(),
            Some(RouteError::Busy {
                retry_after_s: BUSY_RETRY_AFTER_S,
                timed_out: true
            })
        );
    }
    assert!(t.queue_depths()[0].1 == 0);
}

#[tokio::test]
async fn a_dropped_waiter_leaves_the_queue_at_once_and_takes_no_slot() {
    let a = backend("http://a", Some(1));
    let t = Arc::new(table(RoutingPolicy::Full, std::slice::from_ref(&a)));
    let held = now(&t, &req(None, None));
    let t2 = Arc::clone(&t);
    let gone = tokio::spawn(async move { t2.route(&req(None, None)).await.map(|_| ()) });
    let t3 = Arc::clone(&t);
    let next = tokio::spawn(async move { t3.route(&req(None, None)).await.map(|r| r.kind) });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(t.queue_depths()[0].1, 2);
    let before = std::time::Instant::now();
    gone.abort();
    let _ = gone.await;
    assert_eq!(t.queue_depths()[0].1, 1);
    assert!(before.elapsed() < Duration::from_millis(10));
    drop(held);
    assert!(next.await.unwrap().is_ok());
    assert_eq!(a.counters().0, 2, "the dropped waiter never took a slot");
}

#[test]
fn a_thread_sticks_spills_past_the_slack_and_is_released_when_unhealthy() {
    let (a, b) = (backend("http://a", None), backend("http://b", None));
    let t = table(RoutingPolicy::Full, &[a.clone(), b.clone()]);
    let key = thread_key("m", "conversation-1");
    let first = now(&t, &req(Some(key), None));
    let home = first.guard.backend().clone();
    drop(first);
    for _ in 0..5 {
        let r = now(&t, &req(Some(key), None));
        assert_eq!(
            (r.guard.backend().id, r.kind),
            (home.id, RouteKind::Affinity)
        );
    }
    // Three in flight on the home backend, none on the other: past the slack of 2.
    let held: Vec<_> = (0..3).map(|_| home.try_acquire().unwrap()).collect();
    let r = now(&t, &req(Some(key), None));
    assert_ne!(r.guard.backend().id, home.id);
    assert_eq!(r.kind, RouteKind::LeastLoaded);
    let moved = r.guard.backend().clone();
    drop((r, held));
    // The thread now lives on `moved`; when it goes unhealthy the thread is released.
    moved.report_failure("down".into());
    let r = now(&t, &req(Some(key), None));
    assert_ne!(r.guard.backend().id, moved.id);
    assert_eq!(r.kind, RouteKind::LeastLoaded);
}

#[test]
fn without_a_key_the_longest_prefix_wins() {
    let (a, b, c) = (
        backend("http://a", None),
        backend("http://b", None),
        backend("http://c", None),
    );
    let t = table(RoutingPolicy::Full, &[a.clone(), b.clone(), c.clone()]);
    let system = "You are a careful assistant. ".repeat(60);
    let conv = |turns: usize, who: &str| {
        let mut parts = vec![system.clone()];
        for i in 0..turns {
            parts.push(format!("{who} question {i}"));
            parts.push(format!("answer {i}"));
        }
        PromptSig::from_parts(parts.iter().map(|p| p.as_bytes()))
    };
    let first = now(&t, &req(None, Some(&conv(1, "alice"))));
    let home = first.guard.backend().id;
    drop(first);
    // Load the others' indexes with other conversations sharing the system prompt.
    for who in ["bob", "carol", "dave"] {
        drop(now(&t, &req(None, Some(&conv(1, who)))));
    }
    for turns in 2..5 {
        let r = now(&t, &req(None, Some(&conv(turns, "alice"))));
        assert_eq!((r.guard.backend().id, r.kind), (home, RouteKind::Prefix));
    }
    assert!(t.metrics.decisions(RouteKind::Prefix) >= 3);
}

#[test]
fn round_robin_rotates_over_backends_with_a_free_slot() {
    let (a, b) = (backend("http://a", Some(1)), backend("http://b", None));
    let t = table(RoutingPolicy::RoundRobin, &[a.clone(), b.clone()]);
    let ga = now(&t, &req(None, None));
    assert_eq!(ga.kind, RouteKind::RoundRobin);
    // `a` is full: rotation skips it.
    for _ in 0..3 {
        assert_eq!(now(&t, &req(None, None)).guard.backend().id, b.id);
    }
}

#[test]
fn failover_excludes_tried_backends_and_says_so() {
    let (a, b) = (backend("http://a", None), backend("http://b", None));
    let t = table(RoutingPolicy::Full, &[a.clone(), b.clone()]);
    let tried = [a.id];
    let r = now(
        &t,
        &RouteRequest {
            model: "m",
            thread: None,
            prompt: None,
            exclude: &tried,
        },
    );
    assert_eq!((r.guard.backend().id, r.kind), (b.id, RouteKind::Failover));
    let both = [a.id, b.id];
    let none = t.try_route(&RouteRequest {
        model: "m",
        exclude: &both,
        ..Default::default()
    });
    assert_eq!(none.err(), Some(RouteError::NoHealthyBackend));
}

#[test]
fn the_affinity_map_is_bounded() {
    let mut m = AffinityMap::with_capacity(10);
    for k in 0..100 {
        m.set(k, Uuid::nil());
    }
    assert_eq!(m.len(), 10);
    assert!(m.get(0).is_none() && m.get(99).is_some());
}

/// The decision's cost with 10 000 indexed prompts (multi-turn conversations sharing a
/// 6 000-byte system prompt over 3 backends). Prints the figure; the assertion is loose
/// because tests run unoptimised (the bench reports the release figure).
#[test]
fn decision_cost_with_10000_indexed_prompts() {
    let backends: Vec<_> = (0..3)
        .map(|i| backend(&format!("http://b{i}"), None))
        .collect();
    let t = table(RoutingPolicy::Full, &backends);
    let system = "Shared system prompt text. ".repeat(230);
    let prompts: Vec<PromptSig> = (0..10_000)
        .map(|i| {
            let mut parts = vec![system.clone()];
            for turn in 0..(i % 8) {
                parts.push(format!(
                    "user {} turn {turn}: a question of some length",
                    i / 8
                ));
                parts.push(format!("assistant reply {turn} with a few words"));
            }
            parts.push(format!("user {} last question", i / 8));
            PromptSig::from_parts(parts.iter().map(|p| p.as_bytes()))
        })
        .collect();
    for p in &prompts {
        drop(now(&t, &req(None, Some(p))));
    }
    let n = 10_000;
    let started = std::time::Instant::now();
    for p in prompts.iter().take(n) {
        drop(now(&t, &req(Some(7), Some(p))));
    }
    let per = started.elapsed() / n as u32;
    println!(
        "routing decision with 10 000 indexed prompts: {per:?} per request (unoptimised build)"
    );
    assert!(per < Duration::from_micros(500), "{per:?}");
}
