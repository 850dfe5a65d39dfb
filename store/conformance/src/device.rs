//! Cases for a user's devices ([`Store::device_write`], [`Store::device`], [`Store::devices`],
//! [`Store::push_registrations`]): check-ins, push registrations, the logout fence, and that
//! concurrent writes of one device lose nothing.

use tern_store::{DeviceRecord, DeviceWrite, Platform, PushProvider, PushRegistration, Store};

use crate::unique;

async fn write(store: &dyn Store, user: &str, device: &str, w: DeviceWrite) -> DeviceRecord {
    store.device_write(user, device, &w).await.expect("device_write")
}

fn check_in(platform: Platform, now_ms: i64) -> DeviceWrite {
    DeviceWrite::CheckIn { platform, now_ms }
}

fn push(provider: PushProvider, token: &str) -> PushRegistration {
    PushRegistration {
        provider,
        token: token.to_owned(),
        app_id: "com.example.app".into(),
        sandbox: provider == PushProvider::Apns,
        registered_ms: 1_700_000_000_123,
    }
}

/// Check-ins create records with platform and last-seen time; a user's list is in device id
/// order and holds only their devices; an unknown device is `None`.
pub async fn devices_check_in_and_list(store: &dyn Store) {
    let (a, b) = (unique("u-dev-a"), unique("u-dev-b"));
    let r = write(store, &a, "phone", check_in(Platform::Ios, 1000)).await;
    assert_eq!((r.device_id.as_str(), r.platform, r.last_seen_ms), ("phone", Platform::Ios, 1000));
    assert_eq!((r.push.as_ref(), r.revoked_before_ms), (None, 0));
    write(store, &a, "desktop", check_in(Platform::Desktop, 1100)).await;
    write(store, &a, "phone", check_in(Platform::Android, 1200)).await;
    write(store, &b, "web", check_in(Platform::Web, 1300)).await;
    let list = store.devices(&a).await.expect("devices");
    let summary: Vec<_> =
        list.iter().map(|d| (d.device_id.as_str(), d.platform, d.last_seen_ms)).collect();
    assert_eq!(
        summary,
        [("desktop", Platform::Desktop, 1100), ("phone", Platform::Android, 1200)],
        "in device id order, each with its latest check-in"
    );
    let one = store.device(&a, "phone").await.expect("device").expect("stored");
    assert_eq!(one, list[1]);
    assert_eq!(store.device(&a, "web").await.expect("device"), None, "b's device is not a's");
    assert_eq!(store.devices(&unique("u-dev-none")).await.expect("devices"), Vec::new());
}

/// A push registration is stored whole, replaced by the next one, removed by `ClearPush`, and
/// read in one batch for many users (each user once, only devices that have one).
pub async fn device_push_registrations_batch_read(store: &dyn Store) {
    let (a, b, c) = (unique("u-push-a"), unique("u-push-b"), unique("u-push-c"));
    write(store, &a, "d1", check_in(Platform::Ios, 10)).await;
    write(store, &a, "d2", check_in(Platform::Web, 11)).await;
    write(store, &b, "d1", check_in(Platform::Android, 12)).await;
    write(store, &c, "d1", check_in(Platform::Desktop, 13)).await;
    let r = write(store, &a, "d1", DeviceWrite::SetPush(push(PushProvider::Apns, "old"))).await;
    assert_eq!(r.push, Some(push(PushProvider::Apns, "old")));
    assert_eq!((r.platform, r.last_seen_ms), (Platform::Ios, 10), "the rest stays");
    write(store, &a, "d1", DeviceWrite::SetPush(push(PushProvider::Apns, "new"))).await;
    write(store, &b, "d1", DeviceWrite::SetPush(push(PushProvider::Fcm, "fcm-1"))).await;
    let again =
        write(store, &b, "d1", DeviceWrite::SetPush(push(PushProvider::Fcm, "fcm-1"))).await;
    assert_eq!(again.push, Some(push(PushProvider::Fcm, "fcm-1")), "the same token again");
    let users = [a.clone(), b.clone(), c.clone(), a.clone(), unique("u-push-none")];
    let regs = store.push_registrations(&users).await.expect("push_registrations");
    let got: Vec<_> = regs
        .iter()
        .map(|(u, d)| (u.as_str(), d.device_id.as_str(), d.push.as_ref().map(|p| p.token.as_str())))
        .collect();
    assert_eq!(got, [(a.as_str(), "d1", Some("new")), (b.as_str(), "d1", Some("fcm-1"))]);
    assert_eq!(regs[0].1.push, Some(push(PushProvider::Apns, "new")), "every field kept");
    let cleared = write(store, &a, "d1", DeviceWrite::ClearPush).await;
    assert_eq!(cleared.push, None);
    let regs = store.push_registrations(&users).await.expect("push_registrations");
    assert_eq!(regs.len(), 1, "only b's registration is left");
    assert_eq!(regs[0].0, b);
}

/// A logout (revoke) removes the push registration and sets the fence, which only moves
/// forward and survives later check-ins; the device stays listed.
pub async fn device_revoke_fences_tokens(store: &dyn Store) {
    let u = unique("u-revoke");
    write(store, &u, "phone", check_in(Platform::Ios, 100)).await;
    write(store, &u, "phone", DeviceWrite::SetPush(push(PushProvider::Apns, "t"))).await;
    let r = write(store, &u, "phone", DeviceWrite::Revoke { before_ms: 5_000 }).await;
    assert_eq!((r.push.as_ref(), r.revoked_before_ms), (None, 5_000));
    assert!(r.refuses_token(Some(4_000)) && r.refuses_token(None));
    assert!(!r.refuses_token(Some(6_000)));
    let r = write(store, &u, "phone", DeviceWrite::Revoke { before_ms: 4_000 }).await;
    assert_eq!(r.revoked_before_ms, 5_000, "the fence never moves back");
    let r = write(store, &u, "phone", check_in(Platform::Ios, 7_000)).await;
    assert_eq!((r.revoked_before_ms, r.last_seen_ms), (5_000, 7_000));
    let stored = store.device(&u, "phone").await.expect("device").expect("still listed");
    assert_eq!(stored, r);
    assert!(store.push_registrations(std::slice::from_ref(&u)).await.expect("read").is_empty());
    // A revoke of a device that never logged in creates its fence (a token minted but unused).
    let r = write(store, &u, "unused", DeviceWrite::Revoke { before_ms: 9_000 }).await;
    assert_eq!(r.revoked_before_ms, 9_000);
}

/// Concurrent writes of one device (check-ins, a push registration, a revoke) are serialized:
/// the final record has every one of them.
pub async fn concurrent_device_writes_lose_nothing(store: &dyn Store) {
    let u = unique("u-dev-race");
    let mut writes = Vec::new();
    for i in 0..16 {
        writes.push(check_in(Platform::Desktop, 1_000 + i));
    }
    writes.push(DeviceWrite::SetPush(push(PushProvider::Webhook, "https://hook.example/x")));
    writes.push(DeviceWrite::Revoke { before_ms: 500 });
    let futures: Vec<_> = writes.iter().map(|w| store.device_write(&u, "pc", w)).collect();
    for r in futures_join(futures).await {
        r.expect("device_write");
    }
    let r = store.device(&u, "pc").await.expect("device").expect("stored");
    assert_eq!((r.platform, r.last_seen_ms, r.revoked_before_ms), (Platform::Desktop, 1_015, 500));
    // The revoke may have come before or after the registration: either it removed it, or the
    // registration came later and stands.
    if let Some(p) = &r.push {
        assert_eq!(p.token, "https://hook.example/x");
    }
}

/// Awaits all futures concurrently (polled together, so writes overlap).
async fn futures_join<T>(futures: Vec<tern_store::BoxFuture<'_, T>>) -> Vec<T> {
    let mut futures: Vec<_> = futures.into_iter().map(Some).collect();
    let mut out: Vec<Option<T>> = (0..futures.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, slot) in futures.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().flatten().collect()
}
