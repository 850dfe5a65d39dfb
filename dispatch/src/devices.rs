//! A user's devices: the check-in every login makes before LoginOk (the logout fence, the
//! device record, the per-class login policy), the device list, logging a device out, and
//! push registrations.
//!
//! The store keeps the records ([`tern_store::DeviceRecord`]); who is connected where comes
//! from [`Sessions`] (the gateway's registry in embedded mode, Redis presence plus the gateway
//! links in the distributed mode), which also carries the kicks.
//!
//! **The class policy** ([`DevicePolicy`]) is decided here, at check-in, because this is the
//! one place that sees both halves it needs: every device's platform and latest login (the
//! store) and which devices are connected (sessions). Presence alone knows neither platforms
//! nor login order (its entries are `gateway connection expiry`), and a gateway knows only its
//! own connections. The decision itself is the pure [`to_replace`].

use std::sync::Arc;

use tern_proto::ids::is_valid_id;
use tern_proto::session::server::token_revoked;
use tern_proto::v1::{self, KickReason, envelope::Body};
use tern_store::{DeviceRecord, DeviceWrite, Platform, PushProvider, PushRegistration};

use crate::dispatcher::{BoxFuture, Dispatcher, Origin, unix_ms};
use crate::error::DispatchError;
use crate::push::ConnRef;

/// Longest push token accepted, in bytes.
pub const MAX_PUSH_TOKEN_BYTES: usize = 4096;
/// Longest push app id accepted, in bytes.
pub const MAX_PUSH_APP_ID_BYTES: usize = 256;

/// Who is connected, and how to close a connection. Implemented over the gateway registry
/// (embedded mode) and over presence and the gateway links (distributed mode).
pub trait Sessions: Send + Sync + 'static {
    /// The user's connected devices with their connections (a device may appear twice while
    /// a duplicate login is being settled). Empty when it cannot tell (presence down).
    fn online<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Vec<(String, ConnRef)>>;

    /// The connected devices of each of `users` (same order), `None` when it cannot tell:
    /// what offline push reads for a message's recipients. The default asks
    /// [`Sessions::online`] per user (and cannot tell "unknown" from "none").
    fn online_many<'a>(&'a self, users: &'a [String]) -> BoxFuture<'a, Option<Vec<Vec<String>>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(users.len());
            for u in users {
                out.push(self.online(u).await.into_iter().map(|(d, _)| d).collect());
            }
            Some(out)
        })
    }

    /// Closes `conn` of `user_id`'s `device_id` with `Kick{reason}`, if it is still that
    /// device's connection. Never blocks.
    fn kick(&self, user_id: &str, device_id: &str, conn: &ConnRef, reason: KickReason);
}

/// A device class of the login policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceClass {
    /// iOS and Android.
    Phone,
    /// Tablets.
    Tablet,
    /// Desktop apps.
    Desktop,
    /// Browsers.
    Web,
    /// Everything else, and logins that name no platform.
    Other,
}

/// The class of a platform.
pub fn class_of(p: Platform) -> DeviceClass {
    match p {
        Platform::Ios | Platform::Android => DeviceClass::Phone,
        Platform::Tablet => DeviceClass::Tablet,
        Platform::Desktop => DeviceClass::Desktop,
        Platform::Web => DeviceClass::Web,
        Platform::Other | Platform::Unspecified => DeviceClass::Other,
    }
}

/// How many devices of each class a user may have connected at once; a login beyond it
/// replaces the user's longest-logged-in connected devices of that class
/// (`Kick{DEVICE_REPLACED}`). 0: unlimited. Cost: a login of a limited class reads the user's
/// device list and looks their connections up (one store read, one presence round trip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePolicy {
    /// Phones (iOS, Android). Default 1.
    pub phone: u32,
    /// Tablets. Default 1.
    pub tablet: u32,
    /// Desktop apps. Default 1.
    pub desktop: u32,
    /// Browsers. Default 3.
    pub web: u32,
    /// Other and unnamed platforms. Default 0 (unlimited).
    pub other: u32,
}

impl Default for DevicePolicy {
    fn default() -> Self {
        Self { phone: 1, tablet: 1, desktop: 1, web: 3, other: 0 }
    }
}

impl DevicePolicy {
    /// No limit for any class.
    pub fn unlimited() -> Self {
        Self { phone: 0, tablet: 0, desktop: 0, web: 0, other: 0 }
    }

    /// The limit of `class` (0: unlimited).
    pub fn limit(&self, class: DeviceClass) -> u32 {
        match class {
            DeviceClass::Phone => self.phone,
            DeviceClass::Tablet => self.tablet,
            DeviceClass::Desktop => self.desktop,
            DeviceClass::Web => self.web,
            DeviceClass::Other => self.other,
        }
    }
}

/// The connections a login of `device` on `platform` replaces: the user's other connected
/// devices of the same class beyond the class's limit (the new login counts as one), the
/// ones that logged in longest ago first (by their records' last-seen time, then device id).
/// Connected devices without a record are left alone.
pub fn to_replace(
    policy: &DevicePolicy,
    device: &str,
    platform: Platform,
    records: &[DeviceRecord],
    online: &[(String, ConnRef)],
) -> Vec<(String, ConnRef)> {
    let class = class_of(platform);
    let limit = policy.limit(class) as usize;
    if limit == 0 {
        return Vec::new();
    }
    let mut same: Vec<(&DeviceRecord, &(String, ConnRef))> = online
        .iter()
        .filter(|(d, _)| d != device)
        .filter_map(|o| records.iter().find(|r| r.device_id == o.0).map(|r| (r, o)))
        .filter(|(r, _)| class_of(r.platform) == class)
        .collect();
    // Newest first: the first `limit - 1` stay.
    same.sort_by(|a, b| {
        b.0.last_seen_ms.cmp(&a.0.last_seen_ms).then_with(|| a.0.device_id.cmp(&b.0.device_id))
    });
    same.into_iter().skip(limit - 1).map(|(_, o)| o.clone()).collect()
}

/// Internal `DeviceCheckIn`: refuses a device logged out after the token was issued
/// (BAD_TOKEN), records the login, and replaces devices beyond the class limit. Answered
/// `DeviceCheckedIn` with the device's logout fence.
pub async fn check_in(
    d: &Dispatcher,
    origin: &Origin,
    req: v1::DeviceCheckIn,
) -> Result<Body, DispatchError> {
    let issued_at = (req.issued_at_ms != 0).then_some(req.issued_at_ms);
    let platform = Platform::from_wire(req.platform);
    let (user, device) = (origin.user_id.as_str(), origin.device_id.as_str());
    let records = match d.store.devices(user).await {
        // A store without device records: nothing to check or record.
        Err(tern_store::StoreError::Unsupported(_)) => {
            return Ok(Body::DeviceCheckedIn(v1::DeviceCheckedIn { revoked_before_ms: 0 }));
        }
        other => other?,
    };
    let fence = records.iter().find(|r| r.device_id == device).map_or(0, |r| r.revoked_before_ms);
    if token_revoked(issued_at, fence) {
        return Err(DispatchError::LoggedOut);
    }
    let now = unix_ms();
    let record =
        d.store.device_write(user, device, &DeviceWrite::CheckIn { platform, now_ms: now }).await?;
    // A logout that landed between the read and the write.
    if record.refuses_token(issued_at) {
        return Err(DispatchError::LoggedOut);
    }
    if d.cfg.devices.limit(class_of(platform)) > 0
        && let Some(sessions) = d.sessions()
    {
        let online = sessions.online(user).await;
        for (dev, conn) in to_replace(&d.cfg.devices, device, platform, &records, &online) {
            tracing::debug!(user, replaced = %dev, by = device, "device replaced by class policy");
            d.metrics.devices_replaced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            sessions.kick(user, &dev, &conn, KickReason::DeviceReplaced);
        }
    }
    Ok(Body::DeviceCheckedIn(v1::DeviceCheckedIn { revoked_before_ms: record.revoked_before_ms }))
}

/// `ListDevices`: the caller's devices with who is online.
pub async fn list(d: &Dispatcher, origin: &Origin) -> Result<Body, DispatchError> {
    let records = d.store.devices(&origin.user_id).await?;
    let online = match d.sessions() {
        Some(s) => s.online(&origin.user_id).await,
        None => Vec::new(),
    };
    let devices = records
        .into_iter()
        .map(|r| {
            let push = r.push.clone().unwrap_or_default();
            v1::DeviceInfo {
                online: online.iter().any(|(dev, _)| *dev == r.device_id),
                current: r.device_id == origin.device_id,
                platform: r.platform.to_wire(),
                last_seen_ms: r.last_seen_ms,
                push_provider: push.provider.to_wire(),
                push_app_id: push.app_id,
                push_sandbox: push.sandbox,
                push_registered_ms: push.registered_ms,
                logged_out_at_ms: r.revoked_before_ms,
                device_id: r.device_id,
            }
        })
        .collect();
    Ok(Body::DeviceList(v1::DeviceList { devices }))
}

/// `LogoutDevice`: fences the device's tokens (durably), then kicks its connections.
pub async fn logout(
    d: &Dispatcher,
    origin: &Origin,
    req: v1::LogoutDevice,
) -> Result<Body, DispatchError> {
    if !is_valid_id(&req.device_id) {
        return Err(DispatchError::Invalid("device_id is not a valid id".into()));
    }
    let user = origin.user_id.as_str();
    let write = DeviceWrite::Revoke { before_ms: unix_ms() };
    d.store.device_write(user, &req.device_id, &write).await?;
    d.alerts.registration_changed(user, None);
    if let Some(sessions) = d.sessions() {
        for (dev, conn) in sessions.online(user).await {
            if dev == req.device_id {
                sessions.kick(user, &dev, &conn, KickReason::LoggedOut);
            }
        }
    }
    Ok(Body::Ok(v1::Ok {}))
}

/// `RegisterPush`: sets the calling device's push registration.
pub async fn register_push(
    d: &Dispatcher,
    origin: &Origin,
    req: v1::RegisterPush,
) -> Result<Body, DispatchError> {
    let provider = PushProvider::from_wire(req.provider);
    if provider == PushProvider::Unspecified {
        return Err(DispatchError::Invalid("provider must be APNS, FCM or WEBHOOK".into()));
    }
    if req.token.is_empty() || req.token.len() > MAX_PUSH_TOKEN_BYTES {
        return Err(DispatchError::Invalid(format!(
            "token must be 1..={MAX_PUSH_TOKEN_BYTES} bytes"
        )));
    }
    if req.app_id.len() > MAX_PUSH_APP_ID_BYTES {
        return Err(DispatchError::Invalid(format!(
            "app_id must be at most {MAX_PUSH_APP_ID_BYTES} bytes"
        )));
    }
    let reg = PushRegistration {
        provider,
        token: req.token,
        app_id: req.app_id,
        sandbox: req.sandbox,
        registered_ms: unix_ms(),
    };
    let registered = (notify_provider(provider), reg.token.clone());
    let write = DeviceWrite::SetPush(reg);
    d.store.device_write(&origin.user_id, &origin.device_id, &write).await?;
    let registered = registered.0.map(|p| (p, registered.1.as_str()));
    d.alerts.registration_changed(&origin.user_id, registered);
    Ok(Body::Ok(v1::Ok {}))
}

/// `UnregisterPush`: removes the calling device's push registration.
pub async fn unregister_push(d: &Dispatcher, origin: &Origin) -> Result<Body, DispatchError> {
    d.store.device_write(&origin.user_id, &origin.device_id, &DeviceWrite::ClearPush).await?;
    d.alerts.registration_changed(&origin.user_id, None);
    Ok(Body::Ok(v1::Ok {}))
}

/// The notifier's name for a registration's provider.
fn notify_provider(p: PushProvider) -> Option<tern_notify::Provider> {
    match p {
        PushProvider::Apns => Some(tern_notify::Provider::Apns),
        PushProvider::Fcm => Some(tern_notify::Provider::Fcm),
        PushProvider::Webhook => Some(tern_notify::Provider::Webhook),
        PushProvider::Unspecified => None,
    }
}

/// [`Sessions`] of the distributed mode: presence says where a user's devices are; a kick is
/// a `KickConnection` over the link of the gateway that holds the connection.
pub struct ClusterSessions {
    presence: tern_presence::Presence,
    links: Arc<crate::link::Links>,
}

impl ClusterSessions {
    /// Sessions over `presence` and this worker's gateway `links`.
    pub fn new(presence: tern_presence::Presence, links: Arc<crate::link::Links>) -> Self {
        Self { presence, links }
    }
}

impl Sessions for ClusterSessions {
    fn online<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Vec<(String, ConnRef)>> {
        Box::pin(async move {
            let users = [user_id.to_owned()];
            match self.presence.lookup(&users).await {
                Ok(mut found) => found
                    .pop()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|l| {
                        let conn =
                            ConnRef { gateway_id: l.gateway_id, connection_id: l.connection_id };
                        (l.device_id, conn)
                    })
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "presence lookup for devices failed");
                    Vec::new()
                }
            }
        })
    }

    fn online_many<'a>(&'a self, users: &'a [String]) -> BoxFuture<'a, Option<Vec<Vec<String>>>> {
        Box::pin(async move {
            match self.presence.lookup(users).await {
                Ok(found) => Some(
                    found
                        .into_iter()
                        .map(|ls| ls.into_iter().map(|l| l.device_id).collect())
                        .collect(),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "presence lookup for offline push failed");
                    None
                }
            }
        })
    }

    fn kick(&self, user_id: &str, device_id: &str, conn: &ConnRef, reason: KickReason) {
        use tern_proto::link::v1 as link;
        let kick = link::KickConnection {
            gateway_id: conn.gateway_id.clone(),
            user_id: user_id.to_owned(),
            connection_id: conn.connection_id,
            device_id: device_id.to_owned(),
            reason: reason as i32,
        };
        let frame = crate::link::encode_link(0, link::link_frame::Body::KickConnection(kick));
        if !self.links.try_send(&conn.gateway_id, frame) {
            tracing::warn!(gateway = %conn.gateway_id, "could not send a device kick: not linked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, platform: Platform, last_seen_ms: i64) -> DeviceRecord {
        DeviceRecord { platform, last_seen_ms, ..DeviceRecord::new(id) }
    }

    fn on(id: &str, conn: u64) -> (String, ConnRef) {
        (id.to_owned(), ConnRef { gateway_id: "g".into(), connection_id: conn })
    }

    #[test]
    fn a_new_phone_replaces_the_old_phone_but_not_the_desktop() {
        let records = [
            rec("old-phone", Platform::Android, 100),
            rec("desktop", Platform::Desktop, 50),
            rec("new-phone", Platform::Ios, 10),
        ];
        let online = [on("old-phone", 1), on("desktop", 2)];
        let policy = DevicePolicy::default();
        let out = to_replace(&policy, "new-phone", Platform::Ios, &records, &online);
        assert_eq!(out, [on("old-phone", 1)]);
        // A desktop login replaces nothing: the only other desktop is not connected.
        assert!(to_replace(&policy, "pc2", Platform::Desktop, &records, &online[..1]).is_empty());
        // Unlimited classes replace nothing.
        let out =
            to_replace(&DevicePolicy::unlimited(), "new-phone", Platform::Ios, &records, &online);
        assert!(out.is_empty());
        assert!(to_replace(&policy, "bot", Platform::Other, &records, &online).is_empty());
    }

    #[test]
    fn beyond_the_limit_the_longest_logged_in_go_first() {
        let records = [
            rec("w1", Platform::Web, 300),
            rec("w2", Platform::Web, 100),
            rec("w3", Platform::Web, 200),
            rec("w4", Platform::Web, 100),
        ];
        let online = [on("w1", 1), on("w2", 2), on("w3", 3), on("w4", 4), on("w5", 5)];
        let policy = DevicePolicy { web: 2, ..DevicePolicy::default() };
        // w5 logs in: with a limit of 2 only the newest other one (w1) stays.
        let out = to_replace(&policy, "w5", Platform::Web, &records, &online);
        assert_eq!(out, [on("w3", 3), on("w2", 2), on("w4", 4)]);
        // The device's own older connection (a duplicate login) is not the policy's business.
        let out = to_replace(&policy, "w1", Platform::Web, &records, &[on("w1", 9), on("w3", 3)]);
        assert!(out.is_empty());
    }

    #[test]
    fn platforms_map_to_classes() {
        assert_eq!(class_of(Platform::Ios), class_of(Platform::Android));
        assert_eq!(class_of(Platform::Unspecified), DeviceClass::Other);
        assert_eq!(DevicePolicy::default().limit(DeviceClass::Web), 3);
    }
}
