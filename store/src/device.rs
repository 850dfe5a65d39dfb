//! A user's devices: what the store keeps per (user, device) and the writes that change it.
//!
//! One [`DeviceRecord`] per device a user ever logged in with: its platform, when it last
//! logged in, its push registration (APNs, FCM or a webhook) and the revocation fence a logout
//! sets (tokens issued before it are refused). Every write is a [`DeviceWrite`] applied to the
//! record by [`DeviceRecord::apply`], the one place its rules live; every backend stores the
//! result (or, where its writes are blind column updates, the same columns).
//!
//! [`DeviceRecordProto`] is the byte encoding the embedded and Redis backends store.

use prost::Message as _;

/// What kind of device: sent by the client at login, mapped to a device class by the server's
/// login policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Platform {
    /// Not said (an older client).
    #[default]
    Unspecified,
    /// iPhone.
    Ios,
    /// Android phone.
    Android,
    /// A browser.
    Web,
    /// A desktop app.
    Desktop,
    /// A tablet (iPad, Android tablet).
    Tablet,
    /// Anything else (bots, servers, watches).
    Other,
}

impl Platform {
    /// All platforms, in wire order.
    pub const ALL: [Platform; 7] = [
        Platform::Unspecified,
        Platform::Ios,
        Platform::Android,
        Platform::Web,
        Platform::Desktop,
        Platform::Tablet,
        Platform::Other,
    ];

    /// The wire value (`tern.v1.DevicePlatform`).
    pub fn to_wire(self) -> i32 {
        match self {
            Platform::Unspecified => 0,
            Platform::Ios => 1,
            Platform::Android => 2,
            Platform::Web => 3,
            Platform::Desktop => 4,
            Platform::Tablet => 5,
            Platform::Other => 6,
        }
    }

    /// From the wire value; unknown values are [`Platform::Unspecified`].
    pub fn from_wire(v: i32) -> Self {
        Self::ALL.iter().copied().find(|p| p.to_wire() == v).unwrap_or_default()
    }

    /// The lower-case name used in configuration (`ios`, `android`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Platform::Unspecified => "unspecified",
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Web => "web",
            Platform::Desktop => "desktop",
            Platform::Tablet => "tablet",
            Platform::Other => "other",
        }
    }

    /// From [`Platform::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|p| p.name() == name)
    }
}

/// Which push service a registration is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PushProvider {
    /// Not a valid registration (never stored).
    #[default]
    Unspecified,
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging.
    Fcm,
    /// An HTTPS endpoint of the operator's (token = URL).
    Webhook,
}

impl PushProvider {
    /// The wire value (`tern.v1.PushProvider`).
    pub fn to_wire(self) -> i32 {
        match self {
            PushProvider::Unspecified => 0,
            PushProvider::Apns => 1,
            PushProvider::Fcm => 2,
            PushProvider::Webhook => 3,
        }
    }

    /// From the wire value; unknown values are [`PushProvider::Unspecified`].
    pub fn from_wire(v: i32) -> Self {
        match v {
            1 => PushProvider::Apns,
            2 => PushProvider::Fcm,
            3 => PushProvider::Webhook,
            _ => PushProvider::Unspecified,
        }
    }
}

/// A device's push registration: where the notifier sends its pushes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PushRegistration {
    /// The service.
    pub provider: PushProvider,
    /// The device token (APNs), registration token (FCM) or URL (webhook).
    pub token: String,
    /// APNs topic (bundle id) or FCM app / project id; may be empty (the notifier's default).
    pub app_id: String,
    /// APNs sandbox (development) environment.
    pub sandbox: bool,
    /// When it was registered, Unix ms.
    pub registered_ms: i64,
}

/// What the store keeps about one device of a user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device (the token's `did`).
    pub device_id: String,
    /// Its platform, as of its latest login.
    pub platform: Platform,
    /// Its latest login (check-in), Unix ms.
    pub last_seen_ms: i64,
    /// Its push registration, if any.
    pub push: Option<PushRegistration>,
    /// Tokens of this device issued before this time (Unix ms) are refused; 0: none.
    pub revoked_before_ms: i64,
}

/// One change of a device's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceWrite {
    /// A login: sets the platform and the last-seen time (creates the record).
    CheckIn {
        /// The platform the client named.
        platform: Platform,
        /// Now, Unix ms.
        now_ms: i64,
    },
    /// Sets (replaces) the push registration.
    SetPush(PushRegistration),
    /// Removes the push registration.
    ClearPush,
    /// A logout by the user: the push registration is removed and tokens issued before
    /// `before_ms` are refused from now on (the fence only moves forward).
    Revoke {
        /// The fence, Unix ms.
        before_ms: i64,
    },
}

impl DeviceRecord {
    /// The record after `write` (`self` as found; a new record is `DeviceRecord::new(id)`).
    pub fn apply(&self, write: &DeviceWrite) -> DeviceRecord {
        let mut r = self.clone();
        match write {
            DeviceWrite::CheckIn { platform, now_ms } => {
                r.platform = *platform;
                r.last_seen_ms = r.last_seen_ms.max(*now_ms);
            }
            DeviceWrite::SetPush(p) => r.push = Some(p.clone()),
            DeviceWrite::ClearPush => r.push = None,
            DeviceWrite::Revoke { before_ms } => {
                r.push = None;
                r.revoked_before_ms = r.revoked_before_ms.max(*before_ms);
            }
        }
        r
    }

    /// An empty record of `device_id` (what a first write applies to).
    pub fn new(device_id: &str) -> Self {
        Self { device_id: device_id.to_owned(), ..Default::default() }
    }

    /// Whether a token of this device issued at `issued_at_ms` (`None`: the token has no
    /// `iat`) is refused by the revocation fence. A fenced device refuses tokens without `iat`
    /// and tokens issued at or before the fence.
    pub fn refuses_token(&self, issued_at_ms: Option<i64>) -> bool {
        token_revoked(issued_at_ms, self.revoked_before_ms)
    }

    /// Encodes the record for the embedded and Redis backends.
    pub fn encode(&self) -> Vec<u8> {
        DeviceRecordProto::of(self).encode_to_vec()
    }

    /// Decodes [`DeviceRecord::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let p = DeviceRecordProto::decode(bytes).map_err(|e| format!("device record: {e}"))?;
        Ok(p.to_record())
    }
}

/// The revocation rule (one definition, the protocol core's): with a fence set, a token
/// without `iat` or with `iat` at or before the fence is refused.
pub use tern_proto::session::server::token_revoked;

/// The stored bytes of a [`DeviceRecord`] (protobuf; fields are only ever added).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeviceRecordProto {
    #[prost(string, tag = "1")]
    pub device_id: String,
    #[prost(int32, tag = "2")]
    pub platform: i32,
    #[prost(int64, tag = "3")]
    pub last_seen_ms: i64,
    #[prost(int64, tag = "4")]
    pub revoked_before_ms: i64,
    #[prost(int32, tag = "5")]
    pub push_provider: i32,
    #[prost(string, tag = "6")]
    pub push_token: String,
    #[prost(string, tag = "7")]
    pub push_app_id: String,
    #[prost(bool, tag = "8")]
    pub push_sandbox: bool,
    #[prost(int64, tag = "9")]
    pub push_registered_ms: i64,
}

impl DeviceRecordProto {
    /// The stored form of `r`.
    pub fn of(r: &DeviceRecord) -> Self {
        let p = r.push.clone().unwrap_or_default();
        Self {
            device_id: r.device_id.clone(),
            platform: r.platform.to_wire(),
            last_seen_ms: r.last_seen_ms,
            revoked_before_ms: r.revoked_before_ms,
            push_provider: p.provider.to_wire(),
            push_token: p.token,
            push_app_id: p.app_id,
            push_sandbox: p.sandbox,
            push_registered_ms: p.registered_ms,
        }
    }

    /// The record (a push registration with no provider or no token is none).
    pub fn to_record(self) -> DeviceRecord {
        let provider = PushProvider::from_wire(self.push_provider);
        let registered = provider != PushProvider::Unspecified && !self.push_token.is_empty();
        let push = registered.then_some(PushRegistration {
            provider,
            token: self.push_token,
            app_id: self.push_app_id,
            sandbox: self.push_sandbox,
            registered_ms: self.push_registered_ms,
        });
        DeviceRecord {
            device_id: self.device_id,
            platform: Platform::from_wire(self.platform),
            last_seen_ms: self.last_seen_ms,
            push,
            revoked_before_ms: self.revoked_before_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(token: &str) -> PushRegistration {
        PushRegistration {
            provider: PushProvider::Apns,
            token: token.into(),
            app_id: "com.example".into(),
            sandbox: true,
            registered_ms: 5,
        }
    }

    #[test]
    fn writes_apply_their_rules() {
        let r = DeviceRecord::new("d1")
            .apply(&DeviceWrite::CheckIn { platform: Platform::Ios, now_ms: 100 });
        assert_eq!((r.platform, r.last_seen_ms), (Platform::Ios, 100));
        // The last-seen time never goes back (a check-in racing another one).
        let r = r.apply(&DeviceWrite::CheckIn { platform: Platform::Android, now_ms: 50 });
        assert_eq!((r.platform, r.last_seen_ms), (Platform::Android, 100));
        let r = r.apply(&DeviceWrite::SetPush(push("t1")));
        assert_eq!(r.push, Some(push("t1")));
        let r = r.apply(&DeviceWrite::ClearPush);
        assert_eq!(r.push, None);
        let r = r.apply(&DeviceWrite::SetPush(push("t2")));
        let r = r.apply(&DeviceWrite::Revoke { before_ms: 200 });
        assert_eq!((r.push.as_ref(), r.revoked_before_ms), (None, 200));
        let r = r.apply(&DeviceWrite::Revoke { before_ms: 150 });
        assert_eq!(r.revoked_before_ms, 200, "the fence only moves forward");
    }

    #[test]
    fn the_fence_refuses_older_tokens_and_tokens_without_iat() {
        assert!(!token_revoked(None, 0), "no fence: everything passes");
        assert!(!token_revoked(Some(1), 0));
        assert!(token_revoked(None, 1000));
        assert!(token_revoked(Some(1000), 1000));
        assert!(token_revoked(Some(999), 1000));
        assert!(!token_revoked(Some(1001), 1000));
    }

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let full = DeviceRecord {
            device_id: "d".into(),
            platform: Platform::Tablet,
            last_seen_ms: -3,
            push: Some(push("tok")),
            revoked_before_ms: 9,
        };
        for r in [full, DeviceRecord::new("e")] {
            assert_eq!(DeviceRecord::decode(&r.encode()).expect("decodes"), r);
        }
        assert!(DeviceRecord::decode(&[0xff, 0xff]).is_err());
        for p in Platform::ALL {
            assert_eq!(Platform::from_wire(p.to_wire()), p);
            assert_eq!(Platform::from_name(p.name()), Some(p));
        }
        assert_eq!(Platform::from_wire(99), Platform::Unspecified);
    }
}
