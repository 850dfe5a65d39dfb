//! The UDP chaos proxy's one event loop: the client-facing socket, the flows' target-facing
//! sockets (each read by a small task that hands datagrams to the loop), the delay queue, the
//! rebind timer and the controls. All flow state lives in the loop, so it needs no locks; only
//! the decider, the counters and the event log are shared with the controls.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::fate::Direction;
use super::{Control, EventKind, Shared};

/// Largest datagram the proxy forwards (the UDP maximum).
const MAX_DATAGRAM: usize = 65_535;

/// One client address and its socket towards the target.
struct Flow {
    client: SocketAddr,
    back: Arc<UdpSocket>,
    reader: JoinHandle<()>,
    /// Datagrams seen so far per direction: the number the next one gets in the event log.
    seen_to_server: u64,
    seen_to_client: u64,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A datagram waiting for its delay to pass, ordered by due time, then arrival.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    seq: u64,
    flow: u32,
    to_server: bool,
    data: Vec<u8>,
}

/// What woke the loop.
enum Wake {
    Front(std::io::Result<(usize, SocketAddr)>),
    Back(Option<(u32, Vec<u8>)>),
    Control(Option<Control>),
    Due,
    Rebind,
    Stop,
}

struct Proxy {
    shared: Arc<Shared>,
    front: UdpSocket,
    flows: Vec<Flow>,
    by_client: HashMap<SocketAddr, u32>,
    from_target: mpsc::UnboundedSender<(u32, Vec<u8>)>,
    queue: BinaryHeap<Reverse<Due>>,
    seq: u64,
}

/// Runs the proxy until `stopped` fires (or the controls' side is gone).
pub(super) async fn run(
    front: StdUdpSocket,
    shared: Arc<Shared>,
    mut controls: mpsc::UnboundedReceiver<Control>,
    mut stopped: oneshot::Receiver<()>,
) {
    let front = match UdpSocket::from_std(front) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("UDP chaos proxy: cannot register its socket: {e}");
            return;
        }
    };
    let (from_target, mut back_rx) = mpsc::unbounded_channel();
    let mut p = Proxy {
        shared,
        front,
        flows: Vec::new(),
        by_client: HashMap::new(),
        from_target,
        queue: BinaryHeap::new(),
        seq: 0,
    };
    let mut rebind: Option<Interval> = None;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let next_due = p.queue.peek().map(|Reverse(d)| d.at);
        let wake = tokio::select! {
            r = p.front.recv_from(&mut buf) => Wake::Front(r),
            m = back_rx.recv() => Wake::Back(m),
            c = controls.recv() => Wake::Control(c),
            _ = sleep_until(next_due) => Wake::Due,
            _ = tick(&mut rebind) => Wake::Rebind,
            _ = &mut stopped => Wake::Stop,
        };
        match wake {
            Wake::Front(Ok((n, client))) => p.on_client_datagram(client, &buf[..n]).await,
            // ICMP errors (a client's port gone) surface as receive errors: not ours to fix.
            Wake::Front(Err(_)) => {}
            Wake::Back(Some((flow, data))) => p.on_server_datagram(flow, data).await,
            Wake::Back(None) => {}
            Wake::Control(Some(Control::RebindAll(done))) => {
                let _ = done.send(p.rebind_all().await);
            }
            Wake::Control(Some(Control::RebindEvery(period, done))) => {
                rebind = period.map(|period| {
                    let mut i = tokio::time::interval_at(Instant::now() + period, period);
                    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    i
                });
                let _ = done.send(0);
            }
            Wake::Due => p.send_due().await,
            Wake::Rebind => {
                p.rebind_all().await;
            }
            Wake::Control(None) | Wake::Stop => return,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Proxy {
    async fn on_client_datagram(&mut self, client: SocketAddr, data: &[u8]) {
        let flow = match self.by_client.get(&client) {
            Some(&f) => f,
            None => match self.open_flow(client).await {
                Some(f) => f,
                None => return,
            },
        };
        let f = &mut self.flows[flow as usize];
        let n = f.seen_to_server;
        f.seen_to_server += 1;
        self.forward(flow, Direction::ToServer, n, data).await;
    }

    async fn on_server_datagram(&mut self, flow: u32, data: Vec<u8>) {
        let Some(f) = self.flows.get_mut(flow as usize) else { return };
        let n = f.seen_to_client;
        f.seen_to_client += 1;
        self.forward(flow, Direction::ToClient, n, &data).await;
    }

    /// Decides the datagram's fate, logs what was injected, and sends it now or queues it.
    async fn forward(&mut self, flow: u32, dir: Direction, n: u64, data: &[u8]) {
        let shared = self.shared.clone();
        let counters = shared.counters(dir);
        counters.received.fetch_add(1, Relaxed);
        let fate = shared.decider().decide(shared.now(), flow, dir);
        for injected in fate.injections() {
            counters.count(injected);
            shared.log(flow, EventKind::Datagram { dir, n, injected });
        }
        let to_server = dir == Direction::ToServer;
        for _ in 0..fate.copies {
            if fate.delay.is_zero() {
                self.send(flow, to_server, data).await;
            } else {
                self.seq += 1;
                let at = Instant::now() + fate.delay;
                let due = Due { at, seq: self.seq, flow, to_server, data: data.to_vec() };
                self.queue.push(Reverse(due));
            }
        }
    }

    async fn send_due(&mut self) {
        let now = Instant::now();
        while self.queue.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(d)) = self.queue.pop() {
                self.send(d.flow, d.to_server, &d.data).await;
            }
        }
    }

    /// Sends one datagram on: to the target from the flow's current socket (so a rebind also
    /// moves datagrams still queued), or to the client from the proxy's address.
    async fn send(&self, flow: u32, to_server: bool, data: &[u8]) {
        let Some(f) = self.flows.get(flow as usize) else { return };
        let (sent, counters) = if to_server {
            (f.back.send_to(data, self.shared.target).await, &self.shared.to_server)
        } else {
            (self.front.send_to(data, f.client).await, &self.shared.to_client)
        };
        match sent {
            Ok(_) => counters.sent.fetch_add(1, Relaxed),
            Err(_) => counters.send_errors.fetch_add(1, Relaxed),
        };
    }

    async fn open_flow(&mut self, client: SocketAddr) -> Option<u32> {
        if self.flows.len() >= self.shared.options.max_flows {
            self.shared.refused.fetch_add(1, Relaxed);
            return None;
        }
        let id = u32::try_from(self.flows.len()).ok()?;
        let (back, reader) = match self.bind_back(id).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("UDP chaos proxy: no socket for flow {id} ({client}): {e}");
                self.shared.refused.fetch_add(1, Relaxed);
                return None;
            }
        };
        self.flows.push(Flow { client, back, reader, seen_to_server: 0, seen_to_client: 0 });
        self.by_client.insert(client, id);
        self.shared.flows.fetch_add(1, Relaxed);
        Some(id)
    }

    /// A new socket towards the target for `flow`, and the task that reads it.
    async fn bind_back(&self, flow: u32) -> std::io::Result<(Arc<UdpSocket>, JoinHandle<()>)> {
        let target = self.shared.target;
        let local = if target.is_ipv6() {
            SocketAddr::from((Ipv6Addr::LOCALHOST, 0))
        } else {
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
        };
        let sock = Arc::new(UdpSocket::bind(local).await?);
        let (reader_sock, tx) = (sock.clone(), self.from_target.clone());
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                match reader_sock.recv_from(&mut buf).await {
                    Ok((n, from)) if from == target => {
                        if tx.send((flow, buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    // Datagrams from anyone but the target, and ICMP errors, are ignored.
                    Ok(_) | Err(_) => tokio::task::yield_now().await,
                }
            }
        });
        Ok((sock, reader))
    }

    /// Moves every flow to a new target-facing socket; how many moved.
    async fn rebind_all(&mut self) -> usize {
        let mut moved = 0;
        for id in 0..self.flows.len() {
            let flow = id as u32;
            let (back, reader) = match self.bind_back(flow).await {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("UDP chaos proxy: cannot rebind flow {flow}: {e}");
                    continue;
                }
            };
            let f = &mut self.flows[id];
            let from = f.back.local_addr().unwrap_or(self.shared.target);
            let to = back.local_addr().unwrap_or(self.shared.target);
            f.reader.abort();
            f.back = back;
            f.reader = reader;
            self.shared.rebinds.fetch_add(1, Relaxed);
            self.shared.log(flow, EventKind::Rebound { from, to });
            moved += 1;
        }
        moved
    }
}
