//! The presence change feed against a real redis-server: every kind of presence write
//! announces its users with consecutive counts, the mark read after a write covers it, and a
//! Redis that lost its data starts a new epoch.

use std::time::Duration;

use tern_presence::{Change, ChangeStream, Entry, Mark, Presence, PresenceConfig};
use tern_testkit::{RedisOptions, RedisServer};

fn entry(user: &str, device: &str, gw: &str, conn: u64) -> Entry {
    Entry {
        user_id: user.into(),
        device_id: device.into(),
        gateway_id: gw.into(),
        connection_id: conn,
    }
}

/// The next change (a generous bound, only against a hang).
async fn next(feed: &mut ChangeStream) -> Change {
    tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .expect("a change within 10 s")
        .expect("the feed is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_presence_write_is_announced_in_order_and_the_mark_covers_it() {
    let server = RedisServer::start_with(RedisOptions::without_aof()).unwrap();
    let p = Presence::connect(PresenceConfig::new(server.url())).await.unwrap();
    assert_eq!(p.change_mark().await.unwrap(), Mark::default(), "no feed before any write");
    let mut feed = p.subscribe_changes().await.unwrap();

    p.publish_logins(&[entry("alice", "phone", "gw1", 1), entry("bob", "phone", "gw2", 2)])
        .await
        .unwrap();
    let first = next(&mut feed).await;
    assert_eq!(first.users, ["alice", "bob"]);
    assert_eq!(first.mark.count, 1);
    assert!(!first.mark.epoch.is_empty());
    assert_eq!(p.change_mark().await.unwrap(), first.mark, "the mark read after the write");

    p.publish(&[entry("carol", "web", "gw1", 3)]).await.unwrap();
    let refresh = next(&mut feed).await;
    assert_eq!((refresh.users, refresh.mark.count), (vec!["carol".to_string()], 2));

    // A removal is announced only when it removed something.
    p.remove(&[entry("alice", "phone", "gw9", 1), entry("bob", "phone", "gw2", 2)]).await.unwrap();
    let removed = next(&mut feed).await;
    assert_eq!((removed.users, removed.mark.count), (vec!["bob".to_string()], 3));
    assert_eq!(removed.mark.epoch, first.mark.epoch);

    // Data lost: the counter starts over in a new epoch.
    server.flushall().unwrap();
    p.publish_logins(&[entry("dave", "phone", "gw1", 4)]).await.unwrap();
    let after = next(&mut feed).await;
    assert_eq!((after.users, after.mark.count), (vec!["dave".to_string()], 1));
    assert_ne!(after.mark.epoch, first.mark.epoch, "a new epoch");
    assert_eq!(p.change_mark().await.unwrap(), after.mark);
}

/// The periodic refresh rewrites every entry; only entries that were missing, had expired or
/// named another connection are announced, so caches keep everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_announces_only_the_entries_it_changed() {
    let server = RedisServer::start_with(RedisOptions::without_aof()).unwrap();
    let p = Presence::connect(PresenceConfig::new(server.url())).await.unwrap();
    let mut feed = p.subscribe_changes().await.unwrap();
    let (alice, bob) = (entry("alice", "phone", "gw1", 1), entry("bob", "phone", "gw1", 2));
    p.publish_logins(&[alice.clone(), bob.clone()]).await.unwrap();
    assert_eq!(next(&mut feed).await.mark.count, 1);

    // Unchanged: written again (a new expiry), announced to nobody, the counter untouched.
    p.publish(&[alice.clone(), bob.clone()]).await.unwrap();
    assert_eq!(p.change_mark().await.unwrap().count, 1);
    assert_eq!(p.lookup(&["alice".into()]).await.unwrap()[0].len(), 1, "still there");

    // Bob on another connection, carol new, dave's entry expired (written with a stamp in
    // the past, as a gateway stalled past the TTL would have left it): those three only.
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("tern:p:dave")
        .arg("web")
        .arg("gw1 4 1")
        .query_async(&mut raw)
        .await
        .unwrap();
    let moved = entry("bob", "phone", "gw1", 7);
    let (carol, dave) = (entry("carol", "web", "gw1", 3), entry("dave", "web", "gw1", 4));
    p.publish(&[alice.clone(), moved, carol, dave]).await.unwrap();
    let change = next(&mut feed).await;
    assert_eq!(
        (change.users, change.mark.count),
        (vec!["bob".into(), "carol".into(), "dave".into()], 2)
    );
    assert_eq!(p.change_mark().await.unwrap().count, 2);
}
