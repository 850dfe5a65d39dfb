//! A user's devices through the SDK over real sockets (PROTOCOL.md section 20): the device list
//! with platform, last login, online and push registration; logging a device out (its
//! connection is kicked, its tokens refused at login and on refresh, a newer token works); the
//! per-class login policy (a new phone replaces the old phone, not the desktop); own sends in a
//! group reach the user's other devices. Embedded mode here; the distributed mode at the end
//! (two gateways, two workers, the Redis store).

use crate::common;

use std::time::Duration;

use common::*;
use tern_proto::v1::{self, DevicePlatform, ErrorCode, KickReason, PushProvider};
use tern_sdk::{Client, ClientConfig, Event, SdkError, Target};
use tokio::sync::mpsc::Receiver;

/// A client of `user`'s `device` on `platform`.
async fn on(
    srv: &TestServer,
    user: &str,
    device: &str,
    platform: DevicePlatform,
) -> (Client, Receiver<Event>) {
    let mut cfg = srv.client_config(user, device);
    cfg.platform = platform;
    connect_with(cfg).await
}

/// Waits for the client's Kick and then for its event stream to end (it stopped by itself).
async fn kicked_and_stopped(events: &mut Receiver<Event>) -> KickReason {
    let reason = wait_event(events, |e| match e {
        Event::Kicked { reason } => Some(*reason),
        _ => None,
    })
    .await;
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.expect("the client stops") {
            None => return reason,
            Some(Event::Disconnected { .. } | Event::Kicked { .. }) => continue,
            Some(other) => panic!("event after the kick: {other:?}"),
        }
    }
}

fn device<'a>(list: &'a [v1::DeviceInfo], id: &str) -> &'a v1::DeviceInfo {
    list.iter().find(|d| d.device_id == id).unwrap_or_else(|| panic!("{id} not in {list:?}"))
}

fn login_refusal(result: Result<(Client, Receiver<Event>), SdkError>) -> ErrorCode {
    match result {
        Err(SdkError::Login { code, .. }) => code,
        Err(other) => panic!("expected a login refusal, got {other}"),
        Ok(_) => panic!("the login was accepted"),
    }
}

async fn try_connect(cfg: ClientConfig) -> Result<(Client, Receiver<Event>), SdkError> {
    let persistence = std::sync::Arc::new(tern_sdk::MemoryPersistence::default());
    tokio::time::timeout(WAIT, Client::connect(cfg, persistence)).await.expect("connect in time")
}

async fn device_list_shows_platform_last_seen_and_push(t: Transport) {
    let srv = TestServer::start_over(t, &[]).await;
    let before = now_secs() * 1000;
    let (phone, _pe) = on(&srv, "alice", "phone", DevicePlatform::Ios).await;
    let (desk, _de) = on(&srv, "alice", "desk", DevicePlatform::Desktop).await;
    phone.register_push(PushProvider::Apns, "a1b2c3", "com.example.chat", true).await.unwrap();

    let list = desk.devices().await.unwrap();
    assert_eq!(list.iter().map(|d| d.device_id.as_str()).collect::<Vec<_>>(), ["desk", "phone"]);
    let p = device(&list, "phone");
    assert_eq!(p.platform, DevicePlatform::Ios as i32);
    assert!(p.online && !p.current);
    assert!(p.last_seen_ms >= before, "last seen {} before the login {before}", p.last_seen_ms);
    assert_eq!(p.push_provider, PushProvider::Apns as i32);
    assert_eq!((p.push_app_id.as_str(), p.push_sandbox), ("com.example.chat", true));
    assert!(p.push_registered_ms >= p.last_seen_ms);
    assert_eq!(p.logged_out_at_ms, 0);
    let d = device(&list, "desk");
    assert_eq!(d.platform, DevicePlatform::Desktop as i32);
    assert!(d.online && d.current);
    assert_eq!(d.push_provider, PushProvider::Unspecified as i32);

    // Bad registrations are refused; an unregister removes it; other users see nothing.
    match phone.register_push(PushProvider::Unspecified, "x", "", false).await {
        Err(SdkError::Server { code, .. }) => assert_eq!(code, ErrorCode::InvalidRequest),
        other => panic!("expected INVALID_REQUEST, got {other:?}"),
    }
    phone.unregister_push().await.unwrap();
    let list = desk.devices().await.unwrap();
    assert_eq!(device(&list, "phone").push_provider, PushProvider::Unspecified as i32);
    let (bob, _be) = srv.client("bob", "phone").await;
    let bobs = bob.devices().await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].platform, DevicePlatform::Unspecified as i32);
    drop((phone, desk));
}

async fn logout_kicks_the_device_and_its_tokens_are_refused(t: Transport) {
    let srv = TestServer::start_over(t, &[]).await;
    let old_token = srv.token("alice", "phone");
    let mut cfg = srv.client_config("alice", "phone");
    cfg.token.clone_from(&old_token);
    cfg.platform = DevicePlatform::Android;
    let (phone, mut pe) = connect_with(cfg.clone()).await;
    phone.register_push(PushProvider::Fcm, "fcm-token", "", false).await.unwrap();
    let (desk, _de) = on(&srv, "alice", "desk", DevicePlatform::Desktop).await;

    desk.logout_device("phone").await.unwrap();
    assert_eq!(kicked_and_stopped(&mut pe).await, KickReason::LoggedOut);
    let list = desk.devices().await.unwrap();
    let p = device(&list, "phone");
    assert!(p.logged_out_at_ms > 0 && !p.online);
    assert_eq!(p.push_provider, PushProvider::Unspecified as i32, "logout drops the push");

    // The old token is refused at login (fatal BAD_TOKEN), over the SDK and raw.
    assert_eq!(login_refusal(try_connect(cfg.clone()).await), ErrorCode::BadToken);
    // A token issued after the logout logs in (iat in the future, within the leeway).
    let fresh = srv.key.mint_for("alice", "phone", now_secs() + 2, 3600);
    cfg.token = fresh;
    let (again, _ae) = connect_with(cfg).await;
    // ... and a refresh back to a token from before the logout is refused, not fatal.
    match again.refresh_token(old_token).await {
        Err(SdkError::Server { code, .. }) => assert_eq!(code, ErrorCode::BadToken),
        other => panic!("expected BAD_TOKEN, got {other:?}"),
    }
    let ack = again.send(Target::Peer("bob".into()), "text/plain", text("back")).await.unwrap();
    assert_eq!(ack.seq, 1);
    assert_eq!(srv.metric("tern_gateway_logged_out_refusals_total").await, 1);
    drop((phone, desk, again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_phone_replaces_the_old_phone_but_not_the_desktop() {
    let srv = TestServer::start().await;
    let (old, mut oe) = on(&srv, "alice", "old-phone", DevicePlatform::Android).await;
    let (desk, mut de) = on(&srv, "alice", "desk", DevicePlatform::Desktop).await;
    let (web1, _w1) = on(&srv, "alice", "web1", DevicePlatform::Web).await;
    let (web2, _w2) = on(&srv, "alice", "web2", DevicePlatform::Web).await;
    let (new, _ne) = on(&srv, "alice", "new-phone", DevicePlatform::Ios).await;
    assert_eq!(kicked_and_stopped(&mut oe).await, KickReason::DeviceReplaced);

    // The desktop (and the browsers, 3 allowed) stay: a message of the new phone reaches it.
    let ack = new.send(Target::Peer("bob".into()), "text/plain", text("new phone")).await.unwrap();
    let m = next_message(&mut de).await;
    assert_eq!((m.seq, m.sender_device_id.as_str()), (ack.seq, "new-phone"));
    let list = desk.devices().await.unwrap();
    let online: Vec<_> = list.iter().filter(|d| d.online).map(|d| d.device_id.as_str()).collect();
    assert_eq!(online, ["desk", "new-phone", "web1", "web2"]);
    let o = device(&list, "old-phone");
    assert_eq!(o.logged_out_at_ms, 0, "replaced, not logged out");
    assert_eq!(srv.metric("tern_dispatch_devices_replaced_total").await, 1);
    // The replaced phone may come back (and then replaces the newer one).
    let (_back, _be) = on(&srv, "alice", "old-phone", DevicePlatform::Android).await;
    assert_eq!(srv.metric("tern_dispatch_devices_replaced_total").await, 2);
    drop((old, web1, web2, new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_zero_is_unlimited() {
    let srv = TestServer::start_with(&["devices.phone=0"]).await;
    let (_a, mut ae) = on(&srv, "alice", "p1", DevicePlatform::Ios).await;
    let (b, _be) = on(&srv, "alice", "p2", DevicePlatform::Android).await;
    let ack = b.send(Target::Peer("alice".into()), "text/plain", text("both")).await.unwrap();
    let m = next_message(&mut ae).await;
    assert_eq!(m.seq, ack.seq, "p1 was not replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_group_sends_reach_the_users_other_devices() {
    let srv = TestServer::start().await;
    let (phone, _pe) = on(&srv, "alice", "phone", DevicePlatform::Ios).await;
    let (_desk, mut de) = on(&srv, "alice", "desk", DevicePlatform::Desktop).await;
    let (_bob, mut be) = srv.client("bob", "phone").await;
    let g = phone.create_group("team", &["bob"], "g1").await.unwrap().conversation_id;
    assert_eq!(next_message(&mut de).await.seq, 1, "the desk sees the creation");
    assert_eq!(next_message(&mut be).await.seq, 1);
    let ack = phone.send(Target::Conversation(g.clone()), "text/plain", text("hi")).await.unwrap();
    let on_desk = next_message(&mut de).await;
    assert_eq!((on_desk.seq, on_desk.sender_device_id.as_str()), (ack.seq, "phone"));
    assert_eq!(next_message(&mut be).await.seq, ack.seq);
}

crate::over_transports!(
    device_list_shows_platform_last_seen_and_push,
    logout_kicks_the_device_and_its_tokens_are_refused,
);

/// Connects, retried while the gateways still link to the workers right after start (bounded
/// by [`WAIT`]).
pub(crate) async fn retry(
    cluster: &tern_testkit::cluster::Cluster,
    c: ClientConfig,
) -> (Client, Receiver<Event>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match try_connect(c.clone()).await {
            Ok(ok) => return ok,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("connect: {e}\n{}", cluster.logs()),
        }
    }
}

/// The distributed mode: a logout from a device on one gateway kicks the device on the other
/// (KickConnection over the worker's link), its token is refused on both; the class policy
/// replaces a phone on another gateway; the device list (Redis store) shows both gateways'
/// devices online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_gateways_logout_and_class_policy() {
    use tern_testkit::cluster::{Cluster, ClusterOptions};
    use tokio::task::block_in_place;
    let cluster = block_in_place(|| {
        Cluster::start(env!("CARGO_BIN_EXE_tern").as_ref(), ClusterOptions::default())
    })
    .unwrap_or_else(|e| panic!("cluster start: {e}"));
    let key = tern_gateway::TokenKey::from_base64(cluster.key_base64()).unwrap();
    let cfg = |i: usize, device: &str, platform: DevicePlatform| {
        let token = key.mint_for("alice", device, now_secs(), 3600);
        let mut c = ClientConfig::new(cluster.gateway_addr(i).to_string(), token);
        c.platform = platform;
        c
    };
    let phone_cfg = cfg(0, "phone", DevicePlatform::Ios);
    let (_phone, mut pe) = retry(&cluster, phone_cfg.clone()).await;
    let (desk, _de) = retry(&cluster, cfg(1, "desk", DevicePlatform::Desktop)).await;
    let list = desk.devices().await.unwrap();
    assert!(device(&list, "phone").online && device(&list, "desk").online, "{list:?}");

    desk.logout_device("phone").await.unwrap();
    assert_eq!(kicked_and_stopped(&mut pe).await, KickReason::LoggedOut);
    assert_eq!(login_refusal(try_connect(phone_cfg).await), ErrorCode::BadToken);
    let mut on_1 = cfg(1, "phone", DevicePlatform::Ios);
    on_1.token = key.mint_for("alice", "phone", now_secs() - 5, 3600);
    assert_eq!(login_refusal(try_connect(on_1).await), ErrorCode::BadToken);

    // A phone on gateway 0, then another phone on gateway 1: the first is replaced.
    let (_p2, mut p2e) = retry(&cluster, cfg(0, "phone2", DevicePlatform::Android)).await;
    let (p3, _p3e) = retry(&cluster, cfg(1, "phone3", DevicePlatform::Ios)).await;
    assert_eq!(kicked_and_stopped(&mut p2e).await, KickReason::DeviceReplaced);
    let list = p3.devices().await.unwrap();
    assert!(device(&list, "desk").online, "the desktop stays: {list:?}");
    drop((desk, p3));
}
