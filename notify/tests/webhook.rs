//! The signed webhook over http:// and https:// against tern-testkit's receiver (which checks
//! the signature on its own, not with `tern_notify::webhook::verify`), and coalescing end to
//! end (the webhook shows the merged count most plainly).

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tern_notify::notification::collapse_id;
use tern_notify::{
    Enqueued, InvalidToken, Notifier, NotifyConfig, Provider, Target, WebhookConfig,
};
use tern_testkit::push_services::{Answer, TestCa, WebhookOptions, WebhookReceiver};
use tokio::sync::mpsc;

const SECRET: &[u8] = b"operator-shared-secret";

struct World {
    hook: WebhookReceiver,
    invalid: mpsc::UnboundedReceiver<InvalidToken>,
    notifier: Notifier,
    _dir: tempfile::TempDir,
}

fn world(https: bool, window: Duration, secret_in_file: bool) -> World {
    let tls = https.then(|| TestCa::new().expect("certificate"));
    let options =
        WebhookOptions { secret: SECRET.to_vec(), tls: tls.clone(), ..Default::default() };
    let hook = WebhookReceiver::start(options).expect("webhook receiver");
    let dir = tempfile::tempdir().expect("tempdir");
    let (secret, secret_file) = if secret_in_file {
        let path = dir.path().join("webhook-secret");
        std::fs::write(&path, [SECRET, b"\n"].concat()).expect("write the secret");
        (String::new(), Some(path))
    } else {
        (String::from_utf8_lossy(SECRET).into_owned(), None)
    };
    let config = NotifyConfig {
        ca_file: tls.map(|ca| ca.ca_file().to_owned()).unwrap_or_default(),
        coalesce_window: window,
        webhook: Some(WebhookConfig {
            url: hook.url().into(),
            secret,
            secret_file,
            limits: limits(4, 100, 2, Duration::from_secs(10)),
        }),
        ..Default::default()
    };
    let (tx, invalid) = mpsc::unbounded_channel();
    let notifier = Notifier::start(config, move |t| {
        let _ = tx.send(t);
    })
    .expect("start");
    World { hook, invalid, notifier, _dir: dir }
}

fn hook(token: &str) -> Target {
    Target::Webhook { token: token.into() }
}

/// The next push's body, checked to be signed and accepted.
async fn next_body(hook: &mut WebhookReceiver) -> Value {
    let seen = hook.next().await.expect("a push");
    assert!(seen.signed, "signed: {:?}", seen.headers);
    seen.payload
}

#[tokio::test]
async fn a_signed_push_reaches_the_right_device_over_http() {
    let mut w = world(false, Duration::from_secs(3), false);
    w.notifier.enqueue(notification("bob", "desktop", hook("wh-bob"), "dm:bob:sender", 12));
    let seen = w.hook.next().await.expect("a push");
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!((seen.signed, seen.status), (true, Some(204)));
    assert_eq!(
        seen.payload,
        json!({
            "user_id": "bob", "device_id": "desktop", "token": "wh-bob",
            "conversation_id": "dm:bob:sender", "seq": 12, "count": 1, "sender_user_id": "sender",
            "mention": "none", "is_group": false, "title": "", "body": "New message",
            "collapse_key": collapse_id("dm:bob:sender"),
        })
    );
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    assert_eq!(
        metrics.provider(Provider::Webhook).sent.load(Relaxed),
        1,
        "the operator accepted the signature"
    );
}

#[tokio::test]
async fn https_works_and_the_secret_may_come_from_a_file() {
    let mut w = world(true, Duration::from_secs(3), true);
    w.notifier.enqueue(notification("bob", "desktop", hook("wh-bob"), "g:1", 1));
    assert_eq!(next_body(&mut w.hook).await["token"], "wh-bob");
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    assert_eq!(metrics.provider(Provider::Webhook).sent.load(Relaxed), 1);
}

#[tokio::test]
async fn a_gone_token_is_unregistered_exactly_once() {
    let mut w = world(false, Duration::from_secs(3), false);
    w.hook.answer("gone-dan", Answer::Unregistered);
    for i in 0..3 {
        w.notifier.enqueue(notification("dan", "old", hook("gone-dan"), &format!("g:{i}"), 1));
    }
    let reported = recv(&mut w.invalid).await;
    assert_eq!((reported.user_id.as_str(), reported.token.as_str()), ("dan", "gone-dan"));
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    assert!(w.invalid.try_recv().is_err());
    assert_eq!(metrics.provider(Provider::Webhook).invalid_tokens.load(Relaxed), 1);
    assert!(w.hook.drain().iter().all(|r| r.status == Some(410)));
}

#[tokio::test]
async fn a_burst_is_merged_into_one_push_with_its_count() {
    // #[tokio::test] runs on one thread: all five enqueues happen before the driver runs, so
    // the burst is deterministic; the 1 s window is real time, waited on as an event.
    let mut w = world(false, Duration::from_secs(1), false);
    for seq in 1..=5 {
        w.notifier.enqueue(notification("bob", "desktop", hook("wh-bob"), "g:team", seq));
    }
    w.notifier.enqueue(notification("bob", "desktop", hook("wh-bob"), "g:other", 1));
    let mut first = [next_body(&mut w.hook).await, next_body(&mut w.hook).await];
    first.sort_by_key(|b| b["conversation_id"].as_str().unwrap_or("").to_owned());
    assert_eq!(
        (first[0]["conversation_id"].as_str(), first[0]["count"].as_u64()),
        (Some("g:other"), Some(1))
    );
    assert_eq!(
        (first[1]["seq"].as_u64(), first[1]["count"].as_u64()),
        (Some(1), Some(1)),
        "the first goes at once"
    );
    let merged = next_body(&mut w.hook).await;
    assert_eq!(merged["conversation_id"], "g:team");
    assert_eq!((merged["seq"].as_u64(), merged["count"].as_u64()), (Some(5), Some(4)));
    assert_eq!(merged["body"], "4 new messages");
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    assert_eq!(metrics.coalesced.load(Relaxed), 4);
    assert_eq!(metrics.provider(Provider::Webhook).sent.load(Relaxed), 3);
    assert!(w.hook.try_next().is_none(), "nothing else was sent");
}

#[tokio::test]
async fn shutdown_sends_the_bursts_still_waiting() {
    let mut w = world(false, Duration::from_secs(3600), false);
    for seq in 1..=3 {
        assert_eq!(
            w.notifier.enqueue(notification("bob", "desktop", hook("wh-bob"), "g:1", seq)),
            Enqueued::Queued
        );
    }
    assert_eq!(next_body(&mut w.hook).await["count"], 1);
    w.notifier.shutdown().await;
    let last = next_body(&mut w.hook).await;
    assert_eq!((last["seq"].as_u64(), last["count"].as_u64()), (Some(3), Some(2)));
}
