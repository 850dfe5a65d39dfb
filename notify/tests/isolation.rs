//! A slow (never answering) or failing (500) push service changes nothing for message
//! delivery: `enqueue` never waits, every queue keeps its bound, the other providers keep
//! flowing, and shutdown still ends.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use tern_notify::{ApnsConfig, Enqueued, Notifier, NotifyConfig, Provider, Target, WebhookConfig};
use tern_testkit::push_services::{
    Answer, ApnsImitation, ApnsOptions, WebhookOptions, WebhookReceiver,
};

struct World {
    apple: ApnsImitation,
    hook: WebhookReceiver,
    notifier: Notifier,
}

/// APNs answering every token with `answer`, with limits `apns_limits`; a healthy webhook;
/// intake `queue`; `grace` for shutdown (short only where a request is meant to be abandoned).
fn world(
    answer: Answer,
    apns_limits: tern_notify::ProviderLimits,
    queue: usize,
    grace: Duration,
) -> World {
    let apple = ApnsImitation::start(ApnsOptions::default()).expect("APNs imitation");
    apple.answer_all(answer);
    let hook_options = WebhookOptions::default();
    let secret = String::from_utf8_lossy(&hook_options.secret).into_owned();
    let hook = WebhookReceiver::start(hook_options).expect("webhook receiver");
    let config = NotifyConfig {
        queue_capacity: queue,
        ca_file: apple.ca().ca_file().to_owned(),
        shutdown_grace: grace,
        apns: Some(ApnsConfig {
            key_file: apple.key_file().to_owned(),
            key_id: apple.key_id().into(),
            team_id: apple.team_id().into(),
            topic: String::new(),
            production_url: apple.production_url().into(),
            sandbox_url: apple.production_url().into(),
            limits: apns_limits,
        }),
        webhook: Some(WebhookConfig {
            url: hook.url().into(),
            secret,
            secret_file: None,
            limits: limits(4, 100, 1, Duration::from_secs(10)),
        }),
        ..Default::default()
    };
    let notifier = Notifier::start(config, |_| {}).expect("start");
    World { apple, hook, notifier }
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
        Answer::Never,
        limits(1, 2, 3, Duration::from_secs(600)),
        10_000,
        Duration::from_millis(500),
    );
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
        assert_eq!(w.hook.next().await.expect("a push").status, Some(204));
    }
    // The driver routes in order: all 50 APNs pushes were routed before the webhooks.
    w.apple.next().await.expect("a request");
    let metrics = w.notifier.metrics().clone();
    let (a, h) = (metrics.provider(Provider::Apns), metrics.provider(Provider::Webhook));
    // The lane holds 2 queued, plus 1 in flight if it took one before the rest were routed:
    // everything else was dropped, and counted.
    let dropped = a.dropped_full.load(Relaxed);
    assert!((47..=48).contains(&dropped), "dropped {dropped}");
    // Shutdown abandons the stuck request after its grace instead of hanging.
    tokio::time::timeout(GUARD, w.notifier.shutdown()).await.expect("shutdown ends");
    assert!(w.apple.try_next().is_none(), "only one request ever reached the stuck APNs");
    assert_eq!((a.sent.load(Relaxed), h.sent.load(Relaxed)), (0, 5));
}

#[tokio::test]
async fn a_failing_provider_is_retried_boundedly_and_holds_up_nothing_else() {
    let mut w =
        world(Answer::ServerError, limits(2, 10, 3, Duration::from_secs(10)), 10_000, GUARD);
    for i in 0..3 {
        w.notifier.enqueue(notification("u", &format!("d{i}"), apns(i), "g:1", 1));
        w.notifier.enqueue(notification("u", &format!("w{i}"), hook(i), "g:1", 1));
    }
    for _ in 0..3 {
        assert_eq!(w.hook.next().await.expect("a push").status, Some(204));
    }
    for _ in 0..9 {
        w.apple.next().await.expect("a request");
    }
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    let a = metrics.provider(Provider::Apns);
    assert_eq!((a.sent.load(Relaxed), a.retries.load(Relaxed), a.failed.load(Relaxed)), (0, 6, 3));
    assert_eq!(metrics.provider(Provider::Webhook).sent.load(Relaxed), 3);
    assert!(w.apple.try_next().is_none(), "3 attempts each, no more");
}

#[tokio::test]
async fn enqueue_never_waits_and_the_intake_bound_holds() {
    // One thread: the driver cannot run between these calls, so the intake fills exactly; a
    // blocking enqueue would hang here (there is no one else to drain it).
    let mut w = world(Answer::Never, limits(1, 1, 1, Duration::from_secs(600)), 10, GUARD);
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
        assert_eq!(w.hook.next().await.expect("a push").status, Some(204));
    }
    w.notifier.shutdown().await;
    assert_eq!(metrics.provider(Provider::Webhook).sent.load(Relaxed), 10);
}
