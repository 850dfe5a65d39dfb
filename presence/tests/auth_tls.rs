//! Presence against redis-servers that require a password (the default user and an ACL user)
//! or serve TLS only: `redis://user:password@host:port/` and `rediss://` with a CA file work;
//! a wrong password, no password, or an untrusted certificate fail with a clear error.

use std::time::Duration;

use tern_presence::{Entry, Presence, PresenceConfig};
use tern_testkit::redis_server::{RedisSecurity, RedisTls};
use tern_testkit::{RedisOptions, RedisServer};

fn secured(security: RedisSecurity) -> RedisServer {
    RedisServer::start_secured(RedisOptions::without_aof(), security).unwrap()
}

fn config(url: String) -> PresenceConfig {
    let mut cfg = PresenceConfig::new(url);
    cfg.timeout = Duration::from_secs(5);
    cfg
}

/// Publish, look up, announce and list workers: every kind of call presence makes.
async fn round_trip(p: &Presence, gateway: &str) {
    let e = Entry {
        user_id: "alice".into(),
        device_id: "phone".into(),
        gateway_id: "gw1".into(),
        connection_id: 7,
    };
    p.publish_logins(std::slice::from_ref(&e)).await.unwrap();
    let found = p.lookup(&["alice".into()]).await.unwrap();
    assert_eq!(found[0][0].connection_id, 7);
    p.remove(&[e]).await.unwrap();
    assert!(p.lookup(&["alice".into()]).await.unwrap()[0].is_empty());
    p.announce_worker("w1", "127.0.0.1:1", Duration::from_secs(60)).await.unwrap();
    assert_eq!(p.list_workers().await.unwrap().len(), 1);
    assert!(p.marker_was_missing(gateway).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_acl_user_urls_work_and_a_wrong_password_is_a_clear_error() {
    let server = secured(RedisSecurity {
        requirepass: Some("s3cret".into()),
        // An ACL user limited to Tern's keys.
        acl_users: vec!["tern on >t3rn ~tern:* &tern:* +@all".into()],
        tls: None,
    });
    for url in [server.url_with_auth("", "s3cret"), server.url_with_auth("tern", "t3rn")] {
        let p = Presence::connect(config(url.clone())).await.unwrap();
        round_trip(&p, &url[..12]).await;
        assert!(!format!("{:?}", p.config()).contains("t3rn"), "the password is never printed");
    }
    let wrong = Presence::connect(config(server.url_with_auth("tern", "nope"))).await;
    let err = wrong.err().expect("a wrong password connects");
    assert!(err.to_string().to_lowercase().contains("authentication failed"), "{err}");
    let none = Presence::connect(config(server.url())).await;
    let err = none.err().expect("no password connects");
    let text = err.to_string();
    assert!(text.contains("NOAUTH") || text.to_lowercase().contains("authentication"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_ca_file_works_and_an_untrusted_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tls = RedisTls::generate(dir.path()).unwrap();
    let server = secured(RedisSecurity {
        requirepass: Some("s3cret".into()),
        tls: Some(tls.clone()),
        ..RedisSecurity::default()
    });
    let url = server.url_with_auth("", "s3cret");
    assert!(url.starts_with("rediss://"), "{url}");
    let mut cfg = config(url.clone());
    cfg.ca_file = Some(tls.ca_file.clone());
    round_trip(&Presence::connect(cfg).await.unwrap(), "gw1").await;

    // The system roots do not know the test CA.
    let err = Presence::connect(config(url.clone())).await.err().expect("untrusted CA connects");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    // Plain RESP to the TLS port.
    let plain = url.replacen("rediss://", "redis://", 1);
    assert!(Presence::connect(config(plain)).await.is_err());
    // A CA file with a plain URL is a configuration error.
    let mut cfg = config(server.url_with_auth("", "s3cret").replacen("rediss", "redis", 1));
    cfg.ca_file = Some(tls.ca_file);
    let err = Presence::connect(cfg).await.err().expect("CA file with redis://");
    assert!(err.to_string().contains("rediss://"), "{err}");
}
