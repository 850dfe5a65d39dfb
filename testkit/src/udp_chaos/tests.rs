//! The UDP chaos proxy over real loopback sockets: a test's client socket on one side, a
//! test's "server" socket on the other. Waits are for events (a counter reaching a value, a
//! datagram arriving), each bounded by [`WAIT`].

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::*;

/// Bound of every wait.
const WAIT: Duration = Duration::from_secs(20);
const MS: Duration = Duration::from_millis(1);

fn socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s
}

fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).expect("a datagram within WAIT");
    (buf[..n].to_vec(), from)
}

/// A client socket, a server socket and the proxy between them.
struct Rig {
    client: UdpSocket,
    server: UdpSocket,
    proxy: UdpChaosProxy,
}

fn rig(seed: u64, faults: Faults) -> Rig {
    let (client, server) = (socket(), socket());
    let opts = UdpChaosOptions { seed, faults, ..UdpChaosOptions::default() };
    let proxy = UdpChaosProxy::start_with(server.local_addr().unwrap(), opts).unwrap();
    Rig { client, server, proxy }
}

/// Waits until `cond` holds for the proxy's counters.
fn wait_for(proxy: &UdpChaosProxy, what: &str, cond: impl Fn(&UdpChaosStats) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond(&proxy.stats()) {
        assert!(Instant::now() < deadline, "{what}: {:?}", proxy.stats());
        std::thread::sleep(MS);
    }
}

/// Sends datagrams 0..n (their number as 4 bytes) from the client through the proxy, 50 at a
/// time, each batch only once the proxy has taken the previous one and the server has read
/// every copy the proxy sent so far (so no socket buffer on the way overflows, however late the
/// reader thread is scheduled), then an end marker with the faults off; returns how many
/// copies of each number the server received.
fn numbered(rig: Rig, n: u32) -> (BTreeMap<u32, u32>, UdpChaosProxy) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let Rig { client, server, proxy } = rig;
    let read = Arc::new(AtomicU64::new(0));
    let counter = read.clone();
    let reader = std::thread::spawn(move || {
        let mut got = BTreeMap::new();
        let mut buf = [0u8; 16];
        loop {
            let (len, _) = server.recv_from(&mut buf).expect("datagrams until the end marker");
            if len != 4 {
                return got;
            }
            let k = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            *got.entry(k).or_insert(0) += 1;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    for i in 0..n {
        client.send_to(&i.to_be_bytes(), proxy.addr()).unwrap();
        if i % 50 == 49 {
            let seen = u64::from(i) + 1;
            wait_for(&proxy, "the proxy takes a batch", |s| s.to_server.received >= seen);
            let sent = proxy.stats().to_server.sent;
            wait_for(&proxy, "the server reads the batch", |_| {
                read.load(Ordering::Relaxed) >= sent
            });
        }
    }
    // Every copy is accounted for once it was sent or dropped (the delayed ones last).
    wait_for(&proxy, "the proxy sends everything", |s| {
        let d = s.to_server;
        d.received == u64::from(n) && d.sent + d.lost + d.blackholed == d.received + d.duplicated
    });
    proxy.lift_blackhole();
    proxy.set_faults(Faults::default()).unwrap();
    client.send_to(b"end", proxy.addr()).unwrap();
    (reader.join().unwrap(), proxy)
}

fn injected(events: &[Event], what: fn(Injection) -> bool) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Datagram { dir: Direction::ToServer, n, injected } if what(injected) => {
                Some(n)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn losses_and_duplicates_follow_the_seed_and_the_rest_arrives_once() {
    let faults = Faults { loss: 0.2, duplicate: 0.05, ..Faults::default() };
    let (a, proxy) = numbered(rig(4242, faults), 2000);
    let (b, _) = numbered(rig(4242, faults), 2000);
    assert_eq!(a, b, "the same seed loses and duplicates the same datagrams");
    let (c, _) = numbered(rig(4243, faults), 2000);
    assert_ne!(a, c, "another seed, other datagrams");

    let events = proxy.events();
    let lost = injected(&events, |i| i == Injection::Lost);
    let dups = injected(&events, |i| i == Injection::Duplicated);
    let stats = proxy.stats();
    assert_eq!(stats.to_server.lost as usize, lost.len());
    assert_eq!(stats.to_server.duplicated as usize, dups.len());
    assert!((300..500).contains(&lost.len()), "about 20 % of 2000 lost: {}", lost.len());
    assert!((60..140).contains(&dups.len()), "about 5 % duplicated: {}", dups.len());
    for i in 0..2000u32 {
        let want = match (lost.contains(&u64::from(i)), dups.contains(&u64::from(i))) {
            (true, _) => 0,
            (false, true) => 2,
            (false, false) => 1,
        };
        assert_eq!(a.get(&i).copied().unwrap_or(0), want, "datagram {i}");
    }
    let report = proxy.report(5);
    assert!(report.contains("lost") && report.contains("more events"), "{report}");
    println!("{report}");
}

#[test]
fn delayed_jittered_and_reordered_datagrams_all_arrive() {
    let faults = Faults {
        delay: 2 * MS,
        jitter: 3 * MS,
        reorder: 0.2,
        reorder_delay: 10 * MS,
        spikes: Some(Spikes { every: 20 * MS, lasting: 5 * MS, min: 5 * MS, max: 10 * MS }),
        ..Faults::default()
    };
    let (got, proxy) = numbered(rig(9, faults), 500);
    assert_eq!(got.len(), 500, "every datagram arrives");
    assert!(got.values().all(|&copies| copies == 1), "and only once");
    let events = proxy.events();
    let reordered = injected(&events, |i| matches!(i, Injection::Reordered(_)));
    assert_eq!(proxy.stats().to_server.reordered as usize, reordered.len());
    assert!((60..140).contains(&reordered.len()), "about 20 % reordered: {}", reordered.len());
}

#[test]
fn a_blackhole_drops_both_ways_until_lifted() {
    let Rig { client, server, proxy } = rig(1, Faults::default());
    // One round trip opens the flow and tells the server the client's outside address.
    client.send_to(b"hello", proxy.addr()).unwrap();
    let (_, outside) = recv(&server);
    proxy.blackhole(Duration::from_secs(3600));
    for _ in 0..10 {
        client.send_to(b"lost", proxy.addr()).unwrap();
        server.send_to(b"lost", outside).unwrap();
    }
    wait_for(&proxy, "both directions blackholed", |s| {
        s.to_server.blackholed == 10 && s.to_client.blackholed == 10
    });
    proxy.lift_blackhole();
    client.send_to(b"after", proxy.addr()).unwrap();
    assert_eq!(recv(&server).0, b"after", "nothing from the blackhole was kept");
    server.send_to(b"back", outside).unwrap();
    assert_eq!(recv(&client), (b"back".to_vec(), proxy.addr()));
    assert!(
        proxy
            .events()
            .iter()
            .all(|e| matches!(e.kind, EventKind::Datagram { injected: Injection::Blackholed, .. }))
    );
}

#[test]
fn a_rebind_moves_the_flow_to_a_new_port_and_replies_still_reach_the_client() {
    let Rig { client, server, proxy } = rig(1, Faults::default());
    client.send_to(b"one", proxy.addr()).unwrap();
    let (data, before) = recv(&server);
    assert_eq!(data, b"one");
    server.send_to(b"r1", before).unwrap();
    assert_eq!(recv(&client), (b"r1".to_vec(), proxy.addr()));

    assert_eq!(proxy.rebind_all().unwrap(), 1);
    client.send_to(b"two", proxy.addr()).unwrap();
    let (data, after) = recv(&server);
    assert_eq!(data, b"two");
    assert_ne!(after, before, "the server sees the client from a new port");
    server.send_to(b"r2", after).unwrap();
    assert_eq!(recv(&client), (b"r2".to_vec(), proxy.addr()), "the client's side is unchanged");
    let s = proxy.stats();
    assert_eq!((s.flows, s.rebinds), (1, 1));
    assert_eq!(proxy.events()[0].kind, EventKind::Rebound { from: before, to: after });
}

#[test]
fn periodic_rebinds_keep_moving_the_flow() {
    let Rig { client, server, proxy } = rig(1, Faults::default());
    client.send_to(b"x", proxy.addr()).unwrap();
    let (_, first) = recv(&server);
    proxy.set_rebind_every(Some(5 * MS)).unwrap();
    wait_for(&proxy, "three rebinds", |s| s.rebinds >= 3);
    proxy.set_rebind_every(None).unwrap();
    client.send_to(b"y", proxy.addr()).unwrap();
    let (_, now) = recv(&server);
    assert_ne!(now, first);
}

#[test]
fn clients_get_a_flow_each_up_to_the_limit() {
    let server = socket();
    let opts = UdpChaosOptions { max_flows: 2, ..UdpChaosOptions::default() };
    let proxy = UdpChaosProxy::start_with(server.local_addr().unwrap(), opts).unwrap();
    let clients = [socket(), socket(), socket()];
    let mut seen = Vec::new();
    for c in &clients[..2] {
        c.send_to(b"hi", proxy.addr()).unwrap();
        seen.push(recv(&server).1);
    }
    assert_ne!(seen[0], seen[1], "one outside port per client");
    clients[2].send_to(b"hi", proxy.addr()).unwrap();
    wait_for(&proxy, "the third client refused", |s| s.refused == 1);
    assert_eq!(proxy.stats().flows, 2);
}

#[test]
fn invalid_options_are_refused() {
    let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let bad = UdpChaosOptions {
        faults: Faults { loss: 2.0, ..Faults::default() },
        ..UdpChaosOptions::default()
    };
    assert!(matches!(UdpChaosProxy::start_with(target, bad), Err(UdpChaosError::InvalidOption(_))));
    let proxy = UdpChaosProxy::start(target).unwrap();
    assert!(proxy.set_faults(Faults { duplicate: -1.0, ..Faults::default() }).is_err());
    assert!(proxy.set_rebind_every(Some(Duration::ZERO)).is_err());
}
