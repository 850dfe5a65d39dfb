//! APNs against tern-testkit's local HTTP/2 imitation, which accepts exactly Apple's documented
//! request shape (POST /3/device/{token}, the apns-* headers, a bearer ES256 provider token
//! with kid, iss and iat, an `aps` JSON payload) and refuses anything else the way Apple
//! documents it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tern_notify::notification::collapse_id;
use tern_notify::{
    ApnsConfig, Enqueued, InvalidToken, Mention, Notifier, NotifyConfig, Provider, Target,
};
use tern_testkit::push_services::{Answer, ApnsEndpoint, ApnsImitation, ApnsOptions, ApnsRequest};
use tokio::sync::mpsc;

struct World {
    apple: ApnsImitation,
    invalid: mpsc::UnboundedReceiver<InvalidToken>,
    notifier: Notifier,
}

/// The imitation, and a notifier configured for it with `team_id` (Apple's unless a test
/// means to be refused).
fn world(team_id: Option<&str>) -> World {
    let apple = ApnsImitation::start(ApnsOptions::default()).expect("APNs imitation");
    let config = NotifyConfig {
        ca_file: apple.ca().ca_file().to_owned(),
        apns: Some(ApnsConfig {
            key_file: apple.key_file().to_owned(),
            key_id: apple.key_id().into(),
            team_id: team_id.unwrap_or(apple.team_id()).into(),
            topic: apple.topic().into(),
            production_url: apple.production_url().into(),
            sandbox_url: apple.sandbox_url().into(),
            limits: limits(4, 100, 3, Duration::from_secs(10)),
        }),
        ..Default::default()
    };
    let (tx, invalid) = mpsc::unbounded_channel();
    let notifier = Notifier::start(config, move |t| {
        let _ = tx.send(t);
    })
    .expect("start");
    World { apple, invalid, notifier }
}

fn apns(token: &str, sandbox: bool) -> Target {
    Target::Apns { token: token.into(), topic: "chat.tern.app".into(), sandbox }
}

#[tokio::test]
async fn the_right_device_gets_the_right_payload() {
    let mut w = world(None);
    let (a, b, c) = ("aa".repeat(32), "bb".repeat(32), "cc".repeat(32));
    let n = &w.notifier;
    assert_eq!(
        n.enqueue(notification("bob", "phone", apns(&a, false), "g:1", 10)),
        Enqueued::Queued
    );
    assert_eq!(n.enqueue(notification("bob", "ipad", apns(&b, true), "g:1", 10)), Enqueued::Queued);
    let mut mentioned = notification("carol", "phone", apns(&c, false), "dm:carol:sender", 3);
    (mentioned.muted, mentioned.mention) = (true, Mention::User);
    assert_eq!(n.enqueue(mentioned.clone()), Enqueued::Queued);
    mentioned.mention = Mention::None;
    mentioned.seq = 4;
    assert_eq!(n.enqueue(mentioned), Enqueued::Muted);

    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(w.apple.next().await.expect("a request"));
    }
    seen.sort_by_key(|s| s.token.clone());
    let expect = |seen: &ApnsRequest, token: &str, conversation: &str, seq: u64, mention: &str| {
        assert_eq!((seen.token.as_str(), seen.status), (token, Some(200)), "{:?}", seen.reason);
        assert_eq!(seen.header("apns-collapse-id"), Some(collapse_id(conversation).as_str()));
        let body = &seen.payload;
        assert_eq!(body["aps"]["alert"], json!({ "body": "New message" }));
        assert_eq!(body["aps"]["thread-id"], collapse_id(conversation));
        assert_eq!(body["tern"]["conversation_id"], conversation);
        assert_eq!(body["tern"]["seq"], seq);
        assert_eq!(body["tern"]["count"], 1);
        assert_eq!(body["tern"]["mention"], mention);
        let text = String::from_utf8_lossy(&seen.body);
        assert!(!text.contains("secret") && !text.contains("Sender"), "no message text: {text}");
    };
    expect(&seen[0], &a, "g:1", 10, "none");
    expect(&seen[1], &b, "g:1", 10, "none");
    expect(&seen[2], &c, "dm:carol:sender", 3, "user");
    let endpoints: Vec<ApnsEndpoint> = seen.iter().map(|s| s.endpoint).collect();
    assert_eq!(
        endpoints,
        [ApnsEndpoint::Production, ApnsEndpoint::Sandbox, ApnsEndpoint::Production]
    );

    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    let m = metrics.provider(Provider::Apns);
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!((m.sent.load(Relaxed), m.failed.load(Relaxed)), (3, 0));
    assert_eq!(metrics.suppressed_muted.load(Relaxed), 1);
    assert!(w.invalid.try_recv().is_err());
}

#[tokio::test]
async fn a_registration_without_a_topic_gets_the_configured_one() {
    let mut w = world(None);
    let target = Target::Apns { token: "ab".repeat(32), topic: String::new(), sandbox: false };
    assert_eq!(
        w.notifier.enqueue(notification("bob", "phone", target, "g:1", 1)),
        Enqueued::Queued
    );
    let seen = w.apple.next().await.expect("a request");
    assert_eq!((seen.status, seen.header("apns-topic")), (Some(200), Some(w.apple.topic())));
    w.notifier.shutdown().await;
}

#[tokio::test]
async fn a_token_reported_invalid_is_unregistered_exactly_once() {
    let (gone, bad) = ("dd".repeat(32), "ee".repeat(32));
    let mut w = world(None);
    w.apple.answer(&gone, Answer::Unregistered);
    w.apple.answer(&bad, Answer::BadDeviceToken);
    for i in 0..5 {
        // Distinct conversations: nothing merges, every one is a separate push.
        let conversation = format!("g:{i}");
        w.notifier.enqueue(notification("dan", "old-phone", apns(&gone, false), &conversation, 1));
        w.notifier.enqueue(notification("eve", "tablet", apns(&bad, true), &conversation, 1));
    }
    let mut reported = [recv(&mut w.invalid).await, recv(&mut w.invalid).await];
    reported.sort_by(|x, y| x.user_id.cmp(&y.user_id));
    assert_eq!(
        (reported[0].user_id.as_str(), reported[0].device_id.as_str()),
        ("dan", "old-phone")
    );
    assert_eq!((reported[0].token.as_str(), reported[0].provider), (gone.as_str(), Provider::Apns));
    assert!(reported[0].reason.contains("Unregistered"), "{}", reported[0].reason);
    assert_eq!((reported[1].user_id.as_str(), reported[1].token.as_str()), ("eve", bad.as_str()));

    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    assert!(w.invalid.try_recv().is_err(), "each token reported once");
    use std::sync::atomic::Ordering::Relaxed;
    let m = metrics.provider(Provider::Apns);
    assert_eq!(m.invalid_tokens.load(Relaxed), 2);
    let requests = w.apple.drain();
    assert!(requests.iter().all(|r| matches!(r.status, Some(410 | 400))));
    // Each push either reached Apple (and was refused) or was dropped as already invalid.
    assert_eq!(requests.len() as u64 + m.dropped_invalid.load(Relaxed), 10);
    assert_eq!((m.sent.load(Relaxed), m.failed.load(Relaxed)), (0, 0));
}

#[tokio::test]
async fn the_imitation_refuses_a_provider_token_of_another_team() {
    let mut w = world(Some("OTHERTEAM1"));
    w.notifier.enqueue(notification("bob", "phone", apns(&"aa".repeat(32), false), "g:1", 1));
    let seen = w.apple.next().await.expect("a request");
    assert!(seen.headers.contains_key("authorization"));
    assert_eq!((seen.status, seen.reason.as_deref()), (Some(403), Some("InvalidProviderToken")));
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    use std::sync::atomic::Ordering::Relaxed;
    let m = metrics.provider(Provider::Apns);
    assert_eq!((m.sent.load(Relaxed), m.failed.load(Relaxed), m.retries.load(Relaxed)), (0, 1, 0));
    assert!(w.invalid.try_recv().is_err(), "our credentials are not the device's fault");
}

#[tokio::test]
async fn an_expired_provider_token_is_renewed_and_the_push_retried() {
    let mut w = world(None);
    w.apple.expire_next_provider_token();
    w.notifier.enqueue(notification("bob", "phone", apns(&"aa".repeat(32), false), "g:1", 1));
    let first = w.apple.next().await.expect("a request");
    let second = w.apple.next().await.expect("the retry");
    assert_eq!(first.reason.as_deref(), Some("ExpiredProviderToken"));
    assert_ne!(first.headers["authorization"], second.headers["authorization"], "a new token");
    assert_eq!(second.status, Some(200));
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    use std::sync::atomic::Ordering::Relaxed;
    let m = metrics.provider(Provider::Apns);
    assert_eq!((m.sent.load(Relaxed), m.retries.load(Relaxed)), (1, 1));
}

#[tokio::test]
async fn a_scripted_sequence_is_retried_until_it_is_delivered() {
    let mut w = world(None);
    let token = "ab".repeat(32);
    w.apple.answer_sequence(&token, [Answer::ServerError, Answer::Ok]);
    w.notifier.enqueue(notification("bob", "phone", apns(&token, false), "g:1", 1));
    let first = w.apple.next().await.expect("a request");
    let second = w.apple.next().await.expect("the retry");
    assert_eq!((first.status, first.reason.as_deref()), (Some(500), Some("InternalServerError")));
    assert_eq!((second.token.as_str(), second.status), (token.as_str(), Some(200)));
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    use std::sync::atomic::Ordering::Relaxed;
    let m = metrics.provider(Provider::Apns);
    assert_eq!((m.sent.load(Relaxed), m.retries.load(Relaxed)), (1, 1));
}
