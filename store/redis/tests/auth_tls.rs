//! The Redis store against redis-servers that require a password (the default user and an ACL
//! user) or serve TLS only: `redis://user:password@...` and `rediss://` with a CA file work
//! (durability check, scripts, appends, reads); a wrong password or an untrusted certificate
//! fail at connect with a clear, non-retryable error that never shows the password.

use std::time::Duration;

use tern_store::{NewMessage, Store};
use tern_store_redis::{RedisStore, RedisStoreConfig};
use tern_testkit::redis_server::{RedisSecurity, RedisTls};
use tern_testkit::{RedisOptions, RedisServer};

fn message(conv: &str, sender: &str, id: &str) -> NewMessage {
    NewMessage {
        mention_user_ids: Vec::new(),
        mention_all: false,
        conversation_id: conv.into(),
        members: vec![sender.into(), "b".into()],
        sender_user_id: sender.into(),
        sender_device_id: "phone".into(),
        client_msg_id: id.into(),
        kind: tern_proto::v1::MessageKind::Normal,
        content_type: "text/plain".into(),
        body: bytes::Bytes::from_static(b"hello"),
        recalled_seq: 0,
        server_time_ms: 1_700_000_000_000,
    }
}

fn config(url: String) -> RedisStoreConfig {
    RedisStoreConfig { command_timeout: Duration::from_secs(5), ..RedisStoreConfig::new(url) }
}

async fn round_trip(store: &RedisStore, id: &str) {
    let out = store.append(vec![message("dm:a:b", "a", id)]).await.unwrap();
    let read = store.read_range("dm:a:b", out[0].seq, 10).await.unwrap();
    assert_eq!(read.messages.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_acl_user_urls_work_and_a_wrong_password_is_a_clear_error() {
    let security = RedisSecurity {
        requirepass: Some("s3cret".into()),
        acl_users: vec!["tern on >t3rn ~tern:* +@all".into()],
        tls: None,
    };
    let server = RedisServer::start_secured(RedisOptions::default(), security).unwrap();
    for (i, url) in [server.url_with_auth("", "s3cret"), server.url_with_auth("tern", "t3rn")]
        .into_iter()
        .enumerate()
    {
        let store = RedisStore::connect(config(url)).await.unwrap();
        round_trip(&store, &format!("m{i}")).await;
    }
    let err = RedisStore::connect(config(server.url_with_auth("tern", "nope"))).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("authentication failed") && !text.contains("nope"), "{text}");
    assert!(text.contains("user and password"), "{text}");
    assert!(!err.is_retryable(), "a wrong password is a configuration error: {err}");
    let err = RedisStore::connect(config(server.url())).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("NOAUTH") || text.to_lowercase().contains("authentication"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_ca_file_works_and_an_untrusted_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tls = RedisTls::generate(dir.path()).unwrap();
    let security = RedisSecurity { tls: Some(tls.clone()), ..RedisSecurity::default() };
    let server = RedisServer::start_secured(RedisOptions::default(), security).unwrap();
    let url = server.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let cfg = RedisStoreConfig { ca_file: Some(tls.ca_file.clone()), ..config(url.clone()) };
    round_trip(&RedisStore::connect(cfg).await.unwrap(), "m1").await;

    let err = RedisStore::connect(config(url.clone())).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    let cfg = RedisStoreConfig {
        ca_file: Some(tls.ca_file),
        ..config(url.replacen("rediss://", "redis://", 1))
    };
    let err = RedisStore::connect(cfg).await.unwrap_err();
    assert!(err.to_string().contains("rediss://"), "{err}");
}
