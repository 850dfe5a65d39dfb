//! A slow (never answering) or failing (500) push service changes nothing for message
//! delivery: `enqueue` never waits, every queue keeps its bound, the other providers keep
//! flowing, and shutdown still ends.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use tern_notify::{ApnsConfig, Enqueued, Notifier, NotifyConfig, Provider, Target, WebhookConfig};

const SECRET: &str = "s";

fn apns_key(tls: &TestTls) -> std::path::PathBuf {
    use base64::Engine;
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    let path = tls.dir.path().join("AuthKey.p8");
    std::fs::write(
        &path,
        format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    path
}

struct World {
    _tls: TestTls,
    apple: Server,
    hook: Server,
    notifier: Notifier,
}

/// APNs answered by `apple` with limits `apns_limits`; a healthy webhook; intake `queue`;
/// `grace` for shutdown (short only where a request is meant to be abandoned).
async fn world(
    apple: Handler,
    apns_limits: tern_notify::ProviderLimits,
    queue: usize,
    grace: Duration,
) -> World {
    let tls = TestTls::new();
    let apple = Server::start(Some(&tls), Mode::Http2Tls, apple).await;
    let hook = Server::start(None, Mode::Plain, Arc::new(|_| reply(204, ""))).await;
    let config = NotifyConfig {
        queue_capacity: queue,
        ca_file: Some(tls.ca_file.clone()),
        shutdown_grace: grace,
        apns: Some(ApnsConfig {
            key_file: apns_key(&tls),
            key_id: "KEY1234567".into(),
            team_id: "TEAM123456".into(),
            production_url: apple.url(),
            sandbox_url: apple.url(),
            limits: apns_limits,
        }),
        webhook: Some(WebhookConfig {
            url: hook.url(),
            secret: SECRET.into(),
            secret_file: None,
            limits: limits(4, 100, 1, Duration::from_secs(10)),
        }),
        ..Default::default()
    };
    let notifier = Notifier::start(config, |_| {}).expect("start");
    World { _tls: tls, apple, hook, notifier }
}

fn apns(i: usize) -> Target {
    Target::Apns { token: format!("{i:064x}"), topic: "chat.tern.app".into(), sandbox: false }
}

fn hook(i: usize) -> Target {
    Target::Webhook { token: format!("wh-{i}") }
}

#[tokio::test]
async fn a_provider_that_never_answers_holds_up_nothing_else() {
    // One request in flight, two waiting: the bound of APNs's lane. Its timeout is far away.
    let mut w = world(
        Arc::new(|_| never()),
        limits(1, 2, 3, Duration::from_secs(600)),
        10_000,
        Duration::from_millis(500),
    )
    .await;
    for i in 0..50 {
        assert_eq!(
            w.notifier.enqueue(notification("u", &format!("d{i}"), apns(i), "g:1", 1)),
            Enqueued::Queued
        );
    }
    for i in 0..5 {
        assert_eq!(
            w.notifier.enqueue(notification("u", &format!("w{i}"), hook(i), "g:1", 1)),
            Enqueued::Queued
        );
    }
    for _ in 0..5 {
        w.hook.next().await;
    }
    // The driver routes in order: all 50 APNs pushes were routed before the webhooks.
    w.apple.next().await;
    let metrics = w.notifier.metrics().clone();
    let (a, h) = (metrics.provider(Provider::Apns), metrics.provider(Provider::Webhook));
    // The lane holds 2 queued, plus 1 in flight if it took one before the rest were routed:
    // everything else was dropped, and counted.
    let dropped = a.dropped_full.load(Relaxed);
    assert!((47..=48).contains(&dropped), "dropped {dropped}");
    // Shutdown abandons the stuck request after its grace instead of hanging.
    tokio::time::timeout(GUARD, w.notifier.shutdown()).await.expect("shutdown ends");
    assert!(w.apple.seen.try_recv().is_err(), "only one request ever reached the stuck APNs");
    assert_eq!((a.sent.load(Relaxed), h.sent.load(Relaxed)), (0, 5));
}

#[tokio::test]
async fn a_failing_provider_is_retried_boundedly_and_holds_up_nothing_else() {
    let mut w = world(
        Arc::new(|_| reply(500, r#"{"reason":"InternalServerError"}"#)),
        limits(2, 10, 3, Duration::from_secs(10)),
        10_000,
        GUARD,
    )
    .await;
    for i in 0..3 {
        w.notifier.enqueue(notification("u", &format!("d{i}"), apns(i), "g:1", 1));
        w.notifier.enqueue(notification("u", &format!("w{i}"), hook(i), "g:1", 1));
    }
    for _ in 0..3 {
        w.hook.next().await;
    }
    for _ in 0..9 {
        w.apple.next().await;
    }
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    let a = metrics.provider(Provider::Apns);
    assert_eq!((a.sent.load(Relaxed), a.retries.load(Relaxed), a.failed.load(Relaxed)), (0, 6, 3));
    assert_eq!(metrics.provider(Provider::Webhook).sent.load(Relaxed), 3);
    assert!(w.apple.seen.try_recv().is_err(), "3 attempts each, no more");
}

#[tokio::test]
async fn enqueue_never_waits_and_the_intake_bound_holds() {
    // One thread: the driver cannot run between these calls, so the intake fills exactly; a
    // blocking enqueue would hang here (there is no one else to drain it).
    let mut w =
        world(Arc::new(|_| never()), limits(1, 1, 1, Duration::from_secs(600)), 10, GUARD).await;
    let results: Vec<Enqueued> = (0..100)
        .map(|i| w.notifier.enqueue(notification("u", &format!("w{i}"), hook(i), "g:1", 1)))
        .collect();
    assert_eq!(results.iter().filter(|r| **r == Enqueued::Queued).count(), 10);
    assert_eq!(results.iter().filter(|r| **r == Enqueued::QueueFull).count(), 90);
    let metrics = w.notifier.metrics().clone();
    assert_eq!(
        (metrics.enqueued.load(Relaxed), metrics.dropped_queue_full.load(Relaxed)),
        (10, 90)
    );
    for _ in 0..10 {
        w.hook.next().await;
    }
    w.notifier.shutdown().await;
    assert_eq!(metrics.provider(Provider::Webhook).sent.load(Relaxed), 10);
}
