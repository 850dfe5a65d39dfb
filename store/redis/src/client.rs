//! The Redis client for a [`RedisStoreConfig`] (plain or `rediss://`, through presence's shared
//! [`tern_presence::redis_url`] helpers), with errors in this crate's terms.

use crate::config::RedisStoreConfig;
use crate::error::RedisStoreError;
pub(crate) use tern_presence::redis_url::is_auth_error;
use tern_presence::redis_url::redact_url;

/// The Redis client for `cfg.url`: plain, or TLS (`rediss://`, rustls with the ring provider)
/// trusting `cfg.ca_file` when given, else the system's roots.
pub(crate) fn client(cfg: &RedisStoreConfig) -> Result<redis::Client, RedisStoreError> {
    tern_presence::redis_url::client(&cfg.url, cfg.ca_file.as_deref())
        .map_err(|what| RedisStoreError::Config(format!("url {}: {what}", redact_url(&cfg.url))))
}
