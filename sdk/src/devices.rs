//! Device requests on [`Client`] (PROTOCOL.md section 20): the user's device list, logging one
//! of them out, and this device's push registration. Thin typed wrappers over
//! [`Client::request`].

use tern_proto::v1::{self, envelope::Body};

use crate::client::{Client, unexpected};
use crate::error::SdkError;

impl Client {
    /// Every device of this user (device id order): platform, last login, online, push
    /// registration (without its token), logout time; `current` marks this one.
    pub async fn devices(&self) -> Result<Vec<v1::DeviceInfo>, SdkError> {
        match self.request(Body::ListDevices(v1::ListDevices {})).await?.body {
            Some(Body::DeviceList(l)) => Ok(l.devices),
            other => Err(unexpected("DeviceList", other)),
        }
    }

    /// Logs one of this user's devices out: its tokens issued until now are refused and its
    /// connection is kicked (`Kick{LOGGED_OUT}`). Logging out this very device ends this client
    /// too (it stops after the kick).
    pub async fn logout_device(&self, device_id: &str) -> Result<(), SdkError> {
        let req = v1::LogoutDevice { device_id: device_id.to_owned() };
        self.ok_answer(Body::LogoutDevice(req)).await
    }

    /// Registers (or replaces) this device's push registration: `token` is the APNs device
    /// token, the FCM registration token or the webhook URL; `app_id` the APNs topic or FCM
    /// project ("" for the server's default); `sandbox` the APNs development environment.
    pub async fn register_push(
        &self,
        provider: v1::PushProvider,
        token: &str,
        app_id: &str,
        sandbox: bool,
    ) -> Result<(), SdkError> {
        let req = v1::RegisterPush {
            provider: provider as i32,
            token: token.to_owned(),
            app_id: app_id.to_owned(),
            sandbox,
        };
        self.ok_answer(Body::RegisterPush(req)).await
    }

    /// Removes this device's push registration.
    pub async fn unregister_push(&self) -> Result<(), SdkError> {
        self.ok_answer(Body::UnregisterPush(v1::UnregisterPush {})).await
    }

    async fn ok_answer(&self, body: Body) -> Result<(), SdkError> {
        match self.request(body).await?.body {
            Some(Body::Ok(_)) => Ok(()),
            other => Err(unexpected("Ok", other)),
        }
    }
}
