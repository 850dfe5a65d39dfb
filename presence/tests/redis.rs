//! Presence against a real redis-server: publish, look up, remove only what is still ours,
//! expiry, survival of a FLUSHALL by republishing, and worker discovery.

use std::time::Duration;

use tern_presence::{Entry, Location, Presence, PresenceConfig};
use tern_testkit::{RedisOptions, RedisServer};

fn entry(user: &str, device: &str, gw: &str, conn: u64) -> Entry {
    Entry {
        user_id: user.into(),
        device_id: device.into(),
        gateway_id: gw.into(),
        connection_id: conn,
    }
}

async fn presence(server: &RedisServer, ttl: Duration) -> Presence {
    let mut cfg = PresenceConfig::new(server.url());
    cfg.ttl = ttl;
    Presence::connect(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_lookup_remove() {
    let server = RedisServer::start_with(RedisOptions::without_aof()).unwrap();
    let p = presence(&server, Duration::from_secs(60)).await;
    p.publish(&[
        entry("alice", "phone", "gw1", 1),
        entry("alice", "laptop", "gw2", 5),
        entry("bob", "phone", "gw1", 2),
    ])
    .await
    .unwrap();
    let found = p.lookup(&["alice".into(), "bob".into(), "carol".into()]).await.unwrap();
    let mut alice = found[0].clone();
    alice.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    assert_eq!(
        alice,
        vec![
            Location { device_id: "laptop".into(), gateway_id: "gw2".into(), connection_id: 5 },
            Location { device_id: "phone".into(), gateway_id: "gw1".into(), connection_id: 1 },
        ]
    );
    assert_eq!(found[1].len(), 1);
    assert!(found[2].is_empty());

    // A newer login of alice's phone elsewhere replaced the entry: removing the old one is a no-op.
    p.publish(&[entry("alice", "phone", "gw3", 9)]).await.unwrap();
    p.remove(&[entry("alice", "phone", "gw1", 1)]).await.unwrap();
    let phone: Vec<_> = p.lookup(&["alice".into()]).await.unwrap().remove(0);
    assert!(phone.iter().any(|l| l.device_id == "phone" && l.gateway_id == "gw3"));
    p.remove(&[entry("alice", "phone", "gw3", 9)]).await.unwrap();
    let left: Vec<_> = p.lookup(&["alice".into()]).await.unwrap().remove(0);
    assert_eq!(left.iter().map(|l| l.device_id.as_str()).collect::<Vec<_>>(), vec!["laptop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_and_republish_heals_a_flush() {
    let server = RedisServer::start_with(RedisOptions::without_aof()).unwrap();
    let short = presence(&server, Duration::from_millis(200)).await;
    short.publish(&[entry("dave", "phone", "gw1", 3)]).await.unwrap();
    assert_eq!(short.lookup(&["dave".into()]).await.unwrap()[0].len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        short.lookup(&["dave".into()]).await.unwrap()[0].is_empty(),
        "expired entry still listed"
    );

    let p = presence(&server, Duration::from_secs(60)).await;
    p.publish(&[entry("erin", "phone", "gw1", 4)]).await.unwrap();
    server.flushall().unwrap();
    assert!(p.lookup(&["erin".into()]).await.unwrap()[0].is_empty());
    p.publish(&[entry("erin", "phone", "gw1", 4)]).await.unwrap();
    assert_eq!(p.lookup(&["erin".into()]).await.unwrap()[0].len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_announce_expire_and_withdraw() {
    let server = RedisServer::start_with(RedisOptions::without_aof()).unwrap();
    let p = presence(&server, Duration::from_secs(60)).await;
    p.announce_worker("w1", "127.0.0.1:7501", Duration::from_secs(30)).await.unwrap();
    p.announce_worker("w2", "127.0.0.1:7502", Duration::from_millis(100)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        p.list_workers().await.unwrap(),
        vec![("w1".to_string(), "127.0.0.1:7501".to_string())]
    );
    p.withdraw_worker("w1").await.unwrap();
    assert!(p.list_workers().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_tells_a_gateway_that_redis_lost_its_data() {
    let server = RedisServer::start_with(RedisOptions::without_aof()).unwrap();
    let p = presence(&server, Duration::from_secs(60)).await;
    assert!(p.marker_was_missing("gw1").await.unwrap(), "first start");
    assert!(!p.marker_was_missing("gw1").await.unwrap());
    assert!(p.marker_was_missing("gw2").await.unwrap(), "each gateway has its own marker");
    server.flushall().unwrap();
    assert!(p.marker_was_missing("gw1").await.unwrap(), "a flush must be noticed");
    assert!(p.marker_was_missing("gw2").await.unwrap(), "by every gateway");
    assert!(!p.marker_was_missing("gw1").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_see_republished_entries_after_restart_and_flush() {
    let mut server = RedisServer::start_with(RedisOptions::without_aof()).unwrap();
    let writer = presence(&server, Duration::from_secs(60)).await;
    let reader = presence(&server, Duration::from_secs(60)).await;
    let e = entry("zed", "phone", "gw1", 1);
    writer.publish(std::slice::from_ref(&e)).await.unwrap();
    assert_eq!(reader.lookup(&["zed".into()]).await.unwrap()[0].len(), 1);
    server.restart().unwrap();
    // Both clients reconnect by themselves; the restarted server is empty.
    let mut ok = false;
    for _ in 0..50 {
        if writer.publish(std::slice::from_ref(&e)).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "writer never reconnected");
    let mut seen = Vec::new();
    for _ in 0..50 {
        match reader.lookup(&["zed".into(), "amy".into()]).await {
            Ok(found) => {
                seen = found;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(seen.first().map(Vec::len), Some(1), "reader after restart: {seen:?}");
    server.flushall().unwrap();
    writer.publish(std::slice::from_ref(&e)).await.unwrap();
    for i in 0..20 {
        let found = reader.lookup(&["amy".into(), "zed".into()]).await.unwrap();
        assert_eq!(found[1].len(), 1, "lookup {i} after flush + republish: {found:?}");
    }
}
