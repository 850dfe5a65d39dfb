//! Local imitations of the push services Tern's notifier talks to, for its integration tests and
//! the server's end-to-end tests: [`ApnsImitation`] (Apple's HTTP/2 provider API),
//! [`FcmImitation`] (FCM HTTP v1 and the OAuth2 token endpoint behind it) and
//! [`WebhookReceiver`] (an operator's service receiving Tern's signed webhook).
//!
//! Each one accepts exactly the request shape its service documents and refuses anything else
//! the way the service documents it; passing against an imitation shows that Tern sends that
//! shape, **not** that the real service accepts it (nothing here talks to Apple or Google).
//!
//! # Use
//!
//! - Start one with `start(options)`: it listens on a free loopback port, on a private
//!   current-thread runtime on a background thread (like [`crate::ChaosProxy`]), so it works
//!   from sync and async tests alike and a test that blocks its own runtime does not stall it.
//!   Dropping it stops the runtime and closes every connection.
//! - Where the real service is HTTPS the imitation is too, with an rcgen certificate for
//!   `127.0.0.1` and `localhost`: [`TestCa`]. Its PEM ([`TestCa::ca_pem`]) and a file holding it
//!   ([`TestCa::ca_file`], the notifier's `ca_file`) let a client trust it. Pass one `TestCa` to
//!   several imitations when the client takes a single CA file.
//! - Script answers per device token with [`Answer`] (`answer`, `answer_sequence`), or for
//!   every token (`answer_all`); unscripted tokens are delivered.
//! - Await what arrived with `next().await` (bounded by [`GUARD`]) or `next_within`; `try_next`
//!   and `drain` take what is already there. Every request is reported, also those the
//!   imitation refused, with its token, headers, parsed payload and the status it answered.

/// The methods every imitation has: scripted answers by token (`$script` names its [`Script`]
/// given `self`) and the requests it received (its `events` field).
macro_rules! scripted_imitation {
    ($ty:ty, $request:ty, |$this:ident| $script:expr) => {
        impl $ty {
            /// Answers `token` with `answer` from now on.
            pub fn answer(&self, token: &str, answer: Answer) {
                let $this = self;
                $script.set(token, [answer]);
            }

            /// Answers `token`'s next requests in this order; the last answer repeats.
            pub fn answer_sequence(&self, token: &str, answers: impl IntoIterator<Item = Answer>) {
                let $this = self;
                $script.set(token, answers);
            }

            /// Answers every token without a script of its own with `answer`.
            pub fn answer_all(&self, answer: Answer) {
                let $this = self;
                $script.set_default(answer);
            }

            /// The next request, waiting at most [`GUARD`](super::GUARD).
            pub async fn next(&mut self) -> Result<$request, PushServiceError> {
                self.events.next().await
            }

            /// The next request, waiting at most `wait`.
            pub async fn next_within(
                &mut self,
                wait: std::time::Duration,
            ) -> Result<$request, PushServiceError> {
                self.events.next_within(wait).await
            }

            /// A request that already arrived, if any.
            pub fn try_next(&mut self) -> Option<$request> {
                self.events.try_next()
            }

            /// Every request that already arrived.
            pub fn drain(&mut self) -> Vec<$request> {
                self.events.drain()
            }
        }
    };
}

pub mod apns;
pub mod fcm;
mod http;
mod oauth;
pub mod webhook;

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;

pub use apns::{ApnsEndpoint, ApnsImitation, ApnsOptions, ApnsRequest};
pub use fcm::{FcmImitation, FcmOptions, FcmRequest};
pub use http::TestCa;
pub use webhook::{WebhookOptions, WebhookReceiver, WebhookRequest};

/// How long [`Events::next`] (and the imitations' `next`) waits: far longer than any request
/// should take, a failure guard rather than a timing.
pub const GUARD: Duration = Duration::from_secs(30);

/// What went wrong starting or waiting on an imitation.
#[derive(Debug, thiserror::Error)]
pub enum PushServiceError {
    /// A local I/O step failed (bind, runtime, thread, temporary file).
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    /// Making the certificate, the TLS configuration or a key failed.
    #[error("{what}: {detail}")]
    Setup { what: &'static str, detail: String },
    /// Nothing arrived within the wait.
    #[error("no {what} within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// The imitation stopped.
    #[error("the {what} imitation stopped")]
    Stopped { what: &'static str },
}

/// A scripted answer for one device token. Each imitation maps it to its service's documented
/// response (see [`apns`], [`fcm`], [`webhook`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Delivered: APNs 200, FCM 200 with a message name, webhook 204.
    Ok,
    /// The token will never work again: APNs 410 `Unregistered`, FCM 404 `UNREGISTERED`,
    /// webhook 410.
    Unregistered,
    /// The token is malformed: APNs 400 `BadDeviceToken`, FCM 400 `INVALID_ARGUMENT` on
    /// `message.token`, webhook 400.
    BadDeviceToken,
    /// 500: APNs `InternalServerError`, FCM `INTERNAL`, webhook 500.
    ServerError,
    /// No answer at all: the request stays open until the client gives up.
    Never,
}

/// Answers by device token: a sequence is consumed in order and its last answer repeats.
#[derive(Debug)]
pub(crate) struct Script {
    by_token: Mutex<HashMap<String, VecDeque<Answer>>>,
    default: Mutex<Answer>,
}

impl Script {
    pub(crate) fn new() -> Self {
        Self { by_token: Mutex::new(HashMap::new()), default: Mutex::new(Answer::Ok) }
    }

    pub(crate) fn set(&self, token: &str, answers: impl IntoIterator<Item = Answer>) {
        let answers: VecDeque<Answer> = answers.into_iter().collect();
        let mut map = lock(&self.by_token);
        if answers.is_empty() {
            map.remove(token);
        } else {
            map.insert(token.to_owned(), answers);
        }
    }

    pub(crate) fn set_default(&self, answer: Answer) {
        *lock(&self.default) = answer;
    }

    /// The answer for the next request to `token`.
    pub(crate) fn next(&self, token: &str) -> Answer {
        let mut map = lock(&self.by_token);
        match map.get_mut(token) {
            Some(queue) if queue.len() > 1 => queue.pop_front().unwrap_or(Answer::Ok),
            Some(queue) => queue.front().copied().unwrap_or(Answer::Ok),
            None => *lock(&self.default),
        }
    }
}

/// A mutex guard, also after a panic elsewhere (the data here stays consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The requests an imitation received, in arrival order.
#[derive(Debug)]
pub struct Events<T> {
    what: &'static str,
    rx: mpsc::UnboundedReceiver<T>,
}

impl<T> Events<T> {
    pub(crate) fn channel(what: &'static str) -> (mpsc::UnboundedSender<T>, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, Self { what, rx })
    }

    /// The next request, waiting at most [`GUARD`].
    pub async fn next(&mut self) -> Result<T, PushServiceError> {
        self.next_within(GUARD).await
    }

    /// The next request, waiting at most `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Result<T, PushServiceError> {
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(PushServiceError::Stopped { what: self.what }),
            Err(_) => Err(PushServiceError::Timeout { what: self.what, after: wait }),
        }
    }

    /// A request that already arrived, if any.
    pub fn try_next(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// Every request that already arrived.
    pub fn drain(&mut self) -> Vec<T> {
        std::iter::from_fn(|| self.try_next()).collect()
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_is_consumed_and_its_last_answer_repeats() {
        let s = Script::new();
        s.set("t", [Answer::ServerError, Answer::Ok, Answer::Unregistered]);
        let got: Vec<Answer> = (0..4).map(|_| s.next("t")).collect();
        assert_eq!(
            got,
            [Answer::ServerError, Answer::Ok, Answer::Unregistered, Answer::Unregistered]
        );
        assert_eq!(s.next("other"), Answer::Ok);
        s.set_default(Answer::Never);
        assert_eq!(s.next("other"), Answer::Never);
        s.set("t", []);
        assert_eq!(s.next("t"), Answer::Never);
    }
}
