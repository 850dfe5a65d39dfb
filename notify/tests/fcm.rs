//! FCM HTTP v1 against tern-testkit's local imitations: an OAuth2 token endpoint that checks
//! the service account's RS256 JWT grant and issues access tokens, and an HTTP/2 messages:send
//! endpoint that accepts exactly the documented v1 request (path, a bearer token it issued,
//! the JSON schema) and answers with the documented error bodies.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use serde_json::json;
use tern_notify::notification::collapse_id;
use tern_notify::{Enqueued, FcmConfig, InvalidToken, Notifier, NotifyConfig, Provider, Target};
use tern_testkit::push_services::{Answer, FcmImitation, FcmOptions, FcmRequest};
use tokio::sync::mpsc;

struct World {
    google: FcmImitation,
    invalid: mpsc::UnboundedReceiver<InvalidToken>,
    notifier: Notifier,
}

fn world(first_expires_in: u64) -> World {
    let options = FcmOptions { first_expires_in, ..Default::default() };
    let google = FcmImitation::start(options).expect("FCM imitation");
    let config = NotifyConfig {
        ca_file: google.ca().ca_file().to_owned(),
        fcm: Some(FcmConfig {
            service_account_file: google.service_account_file().to_owned(),
            // Empty: the project comes from the service account file.
            project_id: String::new(),
            base_url: google.base_url().into(),
            limits: limits(4, 100, 2, Duration::from_secs(10)),
        }),
        ..Default::default()
    };
    let (tx, invalid) = mpsc::unbounded_channel();
    let notifier = Notifier::start(config, move |t| {
        let _ = tx.send(t);
    })
    .expect("start");
    World { google, invalid, notifier }
}

fn fcm(token: &str) -> Target {
    Target::Fcm { token: token.into() }
}

#[tokio::test]
async fn the_right_device_gets_the_right_payload_with_one_cached_access_token() {
    let mut w = world(3600);
    let n = &w.notifier;
    assert_eq!(
        n.enqueue(notification("bob", "pixel", fcm("tok-bob-pixel"), "g:1", 5)),
        Enqueued::Queued
    );
    let first = w.google.next().await.expect("a request");
    for (user, token, conversation) in
        [("carol", "tok-carol", "g:1"), ("bob", "tok-bob-pixel", "g:2")]
    {
        n.enqueue(notification(user, "phone", fcm(token), conversation, 6));
    }
    let mut rest =
        [w.google.next().await.expect("a request"), w.google.next().await.expect("a request")];
    rest.sort_by_key(|s: &FcmRequest| {
        (s.token.clone(), s.message["data"]["conversation_id"].to_string())
    });

    assert_eq!(first.status, Some(200), "{:?}", first.error);
    let m = &first.message;
    assert_eq!(m["token"], "tok-bob-pixel");
    assert_eq!(m["notification"], json!({ "body": "New message" }));
    assert_eq!(
        m["data"],
        json!({ "conversation_id": "g:1", "seq": "5", "count": "1", "mention": "none", "is_group": "true" })
    );
    assert_eq!(m["android"]["collapse_key"], collapse_id("g:1"));
    assert_eq!(m["android"]["notification"]["tag"], collapse_id("g:1"));
    assert_eq!(m["apns"]["headers"]["apns-collapse-id"], collapse_id("g:1"));
    assert!(!String::from_utf8_lossy(&first.body).contains("secret"));
    assert_eq!(
        (rest[0].token.as_str(), rest[0].message["data"]["conversation_id"].as_str()),
        ("tok-bob-pixel", Some("g:2"))
    );
    assert_eq!(rest[1].token, "tok-carol");

    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    assert_eq!(metrics.provider(Provider::Fcm).sent.load(Relaxed), 3);
    assert_eq!(w.google.token_requests(), 1, "the access token is cached");
}

#[tokio::test]
async fn an_access_token_near_expiry_is_renewed() {
    // The first token expires in 10 s: within gcp_auth's 20 s margin, so it is renewed.
    let mut w = world(10);
    w.notifier.enqueue(notification("bob", "pixel", fcm("tok-1"), "g:1", 1));
    let first = w.google.next().await.expect("a request");
    w.notifier.enqueue(notification("bob", "pixel", fcm("tok-1"), "g:2", 1));
    let second = w.google.next().await.expect("a request");
    assert_eq!(first.access_token.as_deref(), Some("ya29.test-1"));
    assert_eq!(second.access_token.as_deref(), Some("ya29.test-2"));
    assert_eq!((first.status, second.status), (Some(200), Some(200)));
    w.notifier.shutdown().await;
    assert_eq!(w.google.token_requests(), 2);
}

#[tokio::test]
async fn a_token_reported_invalid_is_unregistered_exactly_once() {
    let mut w = world(3600);
    w.google.answer("tok-dan", Answer::Unregistered);
    w.google.answer("tok-eve", Answer::BadDeviceToken);
    for i in 0..4 {
        let conversation = format!("g:{i}");
        w.notifier.enqueue(notification("dan", "old", fcm("tok-dan"), &conversation, 1));
        w.notifier.enqueue(notification("eve", "tab", fcm("tok-eve"), &conversation, 1));
    }
    let mut reported = [recv(&mut w.invalid).await, recv(&mut w.invalid).await];
    reported.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    assert_eq!((reported[0].token.as_str(), reported[0].device_id.as_str()), ("tok-dan", "old"));
    assert!(reported[0].reason.contains("UNREGISTERED"), "{}", reported[0].reason);
    assert_eq!((reported[1].token.as_str(), reported[1].provider), ("tok-eve", Provider::Fcm));
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    assert!(w.invalid.try_recv().is_err(), "each token reported once");
    let m = metrics.provider(Provider::Fcm);
    assert_eq!(m.invalid_tokens.load(Relaxed), 2);
    let requests = w.google.drain();
    assert!(requests.iter().all(|r| matches!(
        (r.status, r.error.as_deref()),
        (Some(404), Some("UNREGISTERED")) | (Some(400), Some("INVALID_ARGUMENT"))
    )));
    assert_eq!(requests.len() as u64 + m.dropped_invalid.load(Relaxed), 8);
}

#[tokio::test]
async fn a_failing_fcm_is_retried_a_bounded_number_of_times() {
    let mut w = world(3600);
    w.google.answer("tok-bob", Answer::ServerError);
    w.notifier.enqueue(notification("bob", "pixel", fcm("tok-bob"), "g:1", 1));
    for _ in 0..2 {
        let seen = w.google.next().await.expect("a request");
        assert_eq!((seen.status, seen.error.as_deref()), (Some(500), Some("INTERNAL")));
    }
    let metrics = w.notifier.metrics().clone();
    w.notifier.shutdown().await;
    let m = metrics.provider(Provider::Fcm);
    assert_eq!((m.retries.load(Relaxed), m.failed.load(Relaxed), m.sent.load(Relaxed)), (1, 1, 0));
    assert!(w.google.try_next().is_none(), "max_attempts = 2");
    assert!(w.invalid.try_recv().is_err());
}
