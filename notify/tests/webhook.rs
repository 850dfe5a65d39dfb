//! The signed webhook over http:// and https://, and coalescing end to end (the webhook shows
//! the merged count most plainly).

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tern_notify::notification::collapse_id;
use tern_notify::webhook::{SIGNATURE_HEADER, TIMESTAMP_HEADER, verify};
use tern_notify::{
    Enqueued, InvalidToken, Notifier, NotifyConfig, Provider, Target, WebhookConfig,
};
use tokio::sync::mpsc;

const SECRET: &[u8] = b"operator-shared-secret";

/// The operator's push service: refuses unsigned or stale requests; answers by token
/// (`gone-*` 410, anything else 204).
fn operator() -> Handler {
    Arc::new(|seen: Seen| {
        let header =
            |name: &str| seen.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
        if seen.method != http::Method::POST || seen.uri.path() != "/tern/push" {
            return reply(404, "");
        }
        if header("content-type") != "application/json"
            || !verify(
                SECRET,
                header(TIMESTAMP_HEADER),
                header(SIGNATURE_HEADER),
                &seen.body,
                unix_now(),
                300,
            )
        {
            return reply(401, "");
        }
        let Ok(body) = serde_json::from_slice::<Value>(&seen.body) else { return reply(400, "") };
        if body["token"].as_str().is_some_and(|t| t.starts_with("gone-")) {
            reply(410, "")
        } else {
            reply(204, "")
        }
    })
}

struct World {
    _tls: TestTls,
    hook: Server,
    invalid: mpsc::UnboundedReceiver<InvalidToken>,
    notifier: Notifier,
}

async fn world(mode: Mode, window: Duration, secret_in_file: bool) -> World {
    let tls = TestTls::new();
    let hook = Server::start(Some(&tls), mode, operator()).await;
    let (secret, secret_file) = if secret_in_file {
        let path = tls.dir.path().join("webhook-secret");
        std::fs::write(&path, [SECRET, b"\n"].concat()).unwrap();
        (String::new(), Some(path))
    } else {
        (String::from_utf8(SECRET.to_vec()).unwrap(), None)
    };
    let config = NotifyConfig {
        ca_file: Some(tls.ca_file.clone()),
        coalesce_window: window,
        webhook: Some(WebhookConfig {
            url: format!("{}/tern/push", hook.url()),
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
    World { _tls: tls, hook, invalid, notifier }
}

fn hook(token: &str) -> Target {
    Target::Webhook { token: token.into() }
}

fn json_of(seen: &Seen) -> Value {
    serde_json::from_slice(&seen.body).expect("json")
}

#[tokio::test]
async fn a_signed_push_reaches_the_right_device_over_http() {
    let mut w = world(Mode::Plain, Duration::from_secs(3), false).await;
    w.notifier.enqueue(notification("bob", "desktop", hook("wh-bob"), "dm:bob:sender", 12));
    let seen = w.hook.next().await;
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert_eq!(
        json_of(&seen),
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
    let mut w = world(Mode::AnyTls, Duration::from_secs(3), true).await;
    w.notifier.enqueue(notification("bob", "desktop", hook("wh-bob"), "g:1", 1));
    let seen = w.hook.next().await;
    assert_eq!(json_of(&seen)["token"], "wh-bob");
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    assert_eq!(metrics.provider(Provider::Webhook).sent.load(Relaxed), 1);
}

#[tokio::test]
async fn a_gone_token_is_unregistered_exactly_once() {
    let mut w = world(Mode::Plain, Duration::from_secs(3), false).await;
    for i in 0..3 {
        w.notifier.enqueue(notification("dan", "old", hook("gone-dan"), &format!("g:{i}"), 1));
    }
    let reported = recv(&mut w.invalid).await;
    assert_eq!((reported.user_id.as_str(), reported.token.as_str()), ("dan", "gone-dan"));
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    assert!(w.invalid.try_recv().is_err());
    assert_eq!(metrics.provider(Provider::Webhook).invalid_tokens.load(Relaxed), 1);
}

#[tokio::test]
async fn a_burst_is_merged_into_one_push_with_its_count() {
    // #[tokio::test] runs on one thread: all five enqueues happen before the driver runs, so
    // the burst is deterministic; the 1 s window is real time, waited on as an event.
    let mut w = world(Mode::Plain, Duration::from_secs(1), false).await;
    for seq in 1..=5 {
        w.notifier.enqueue(notification("bob", "desktop", hook("wh-bob"), "g:team", seq));
    }
    w.notifier.enqueue(notification("bob", "desktop", hook("wh-bob"), "g:other", 1));
    let mut first = [json_of(&w.hook.next().await), json_of(&w.hook.next().await)];
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
    let merged = json_of(&w.hook.next().await);
    assert_eq!(merged["conversation_id"], "g:team");
    assert_eq!((merged["seq"].as_u64(), merged["count"].as_u64()), (Some(5), Some(4)));
    assert_eq!(merged["body"], "4 new messages");
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    assert_eq!(metrics.coalesced.load(Relaxed), 4);
    assert_eq!(metrics.provider(Provider::Webhook).sent.load(Relaxed), 3);
    assert!(w.hook.seen.try_recv().is_err(), "nothing else was sent");
}

#[tokio::test]
async fn shutdown_sends_the_bursts_still_waiting() {
    let mut w = world(Mode::Plain, Duration::from_secs(3600), false).await;
    for seq in 1..=3 {
        assert_eq!(
            w.notifier.enqueue(notification("bob", "desktop", hook("wh-bob"), "g:1", seq)),
            Enqueued::Queued
        );
    }
    assert_eq!(json_of(&w.hook.next().await)["count"], 1);
    w.notifier.shutdown().await;
    let last = json_of(&w.hook.next().await);
    assert_eq!((last["seq"].as_u64(), last["count"].as_u64()), (Some(3), Some(2)));
}
