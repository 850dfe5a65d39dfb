//! The login token a client uses, shared by its handles and its connection task: the current
//! token (swapped by [`crate::Client::refresh_token`]), its announced expiry, and the app's
//! optional [`TokenProvider`] that supplies a fresh token when the current one is dead (the
//! server kicked with TOKEN_EXPIRED, or refused a re-login with TOKEN_EXPIRED / BAD_TOKEN).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a [`TokenProvider`] returns: a fresh token, or why there is none (for logs).
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// The app's source of fresh tokens (typically a call to its own backend). Set it in
/// [`crate::ClientConfig::token_provider`]; the client calls it only when its token is dead,
/// never on a timer (refresh ahead of expiry with [`crate::Client::refresh_token`]).
#[derive(Clone)]
pub struct TokenProvider(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenProvider {
    /// A provider from an async function.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(f()) as TokenFuture))
    }

    fn call(&self) -> TokenFuture {
        (self.0)()
    }
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenProvider(..)")
    }
}

/// The token state shared by a client's handles and its task.
#[derive(Debug)]
pub(crate) struct TokenState {
    current: Mutex<String>,
    /// The token's `exp` in Unix ms as the server announced it; 0 = unknown or none.
    expires_at_ms: AtomicI64,
    provider: Option<TokenProvider>,
}

impl TokenState {
    pub(crate) fn new(token: String, provider: Option<TokenProvider>) -> Self {
        Self { current: Mutex::new(token), expires_at_ms: AtomicI64::new(0), provider }
    }

    /// The token to log in with.
    pub(crate) fn current(&self) -> String {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in `token` (accepted by the server, or fresh from the provider).
    pub(crate) fn set(&self, token: String) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// Records the expiry the server announced (LoginOk or TokenRefreshed; 0 = none).
    pub(crate) fn set_expires_at_ms(&self, ms: i64) {
        self.expires_at_ms.store(ms, Relaxed);
    }

    /// The announced expiry, if any.
    pub(crate) fn expires_at_ms(&self) -> Option<i64> {
        Some(self.expires_at_ms.load(Relaxed)).filter(|&ms| ms != 0)
    }

    pub(crate) fn has_provider(&self) -> bool {
        self.provider.is_some()
    }

    /// Asks the provider for a fresh token (bounded by `timeout`) and makes it current.
    /// Returns whether a token different from the current one was obtained.
    pub(crate) async fn fetch_fresh(&self, timeout: Duration) -> bool {
        let Some(provider) = &self.provider else { return false };
        match tokio::time::timeout(timeout, provider.call()).await {
            Ok(Ok(token)) if token != self.current() => {
                self.set(token);
                true
            }
            Ok(Ok(_)) => {
                tracing::warn!("the token provider returned the token that was refused");
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the token provider failed");
                false
            }
            Err(_) => {
                tracing::warn!("the token provider timed out");
                false
            }
        }
    }
}
