//! `tern bench`: an end-to-end load run through a running server. Pairs of SDK clients send 1:1
//! messages to each other for a fixed time, closed-loop (a window of sends in flight per client)
//! or at a fixed total rate, and it prints persisted msgs/s and send→ack and send→deliver
//! latency percentiles (table and one JSON line). Receivers mark what they got delivered as an
//! app does: one DELIVERED receipt at a time per conversation, for the newest message seen
//! (`--no-receipts` turns that off).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use tern_sdk::{Client, ClientConfig, Event, MemoryPersistence, Target};
use tokio::sync::Semaphore;

use crate::config::{Config, parse_duration};

/// `tern bench` arguments.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server address, or several gateways' addresses comma-separated (client i connects to
    /// address i mod n, so with two gateways every pair talks across them); defaults to the
    /// configured `server.listen`.
    #[arg(long)]
    pub addr: Option<String>,
    /// Client pairs; each pair is two users sending to each other (2 connections per pair).
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Sends in flight per client (closed loop).
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Total target rate in msgs/s over all clients; 0 = as fast as the window allows.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Message body size in bytes (at least 8: the send timestamp).
    #[arg(long, default_value_t = 100)]
    pub body_bytes: usize,
    /// User id prefix, so that runs do not share conversations.
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// Certificates accepted over tls:// and quic://.
    #[command(flatten)]
    pub trust: crate::tls::TrustArgs,
    /// Receivers send no DELIVERED receipts (real apps do; see the module doc).
    #[arg(long)]
    pub no_receipts: bool,
}

#[derive(Default)]
struct Samples {
    ack_us: Vec<u32>,
    deliver_us: Vec<u32>,
    errors: u64,
}

/// Runs the benchmark and prints its report.
pub async fn run(cfg: &Config, args: BenchArgs) -> anyhow::Result<()> {
    let key = cfg.existing_token_key().context("the bench mints tokens with the server's key")?;
    let addr = args.addr.clone().unwrap_or_else(|| cfg.server.listen.to_string());
    let addrs: Vec<String> =
        addr.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect();
    anyhow::ensure!(!addrs.is_empty(), "--addr is empty");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64;
    let run_id = format!("{}{:x}", args.prefix, now % 0xfffff);
    let epoch = Instant::now();

    // Connect everyone first.
    let mut clients = Vec::new();
    for p in 0..args.pairs * 2 {
        let user = format!("{run_id}-{p}");
        let token = key.mint_for(&user, "bench", now, 3600);
        let target = &addrs[p % addrs.len()];
        let mut client_cfg = ClientConfig::new(target.clone(), token);
        client_cfg.trust = args.trust.trust(cfg);
        let (c, ev) = Client::connect(client_cfg, Arc::new(MemoryPersistence::default()))
            .await
            .with_context(|| format!("connecting client {p} to {target}"))?;
        clients.push((user, c, ev));
    }
    let users: Vec<String> = clients.iter().map(|(u, _, _)| u.clone()).collect();
    eprintln!(
        "bench: {} clients connected to {addr}; sending for {:?}",
        clients.len(),
        args.duration
    );

    let stop_at = Instant::now() + args.duration;
    let per_client_rate =
        if args.rate > 0 { (args.rate as f64 / clients.len() as f64).max(0.001) } else { 0.0 };
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (i, (_user, client, mut events)) in clients.into_iter().enumerate() {
        let peer = users[i ^ 1].clone();
        let receipts = (!args.no_receipts).then(|| receipts(client.clone()));
        // Receiver: deliver latency from the timestamp in the body.
        receivers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let drain_until = stop_at + Duration::from_secs(5);
            loop {
                let ev = tokio::time::timeout_at(drain_until.into(), events.recv()).await;
                match ev {
                    Ok(Some(Event::Message(m))) if m.body.len() >= 8 => {
                        let sent = u64::from_be_bytes(m.body[..8].try_into().unwrap_or([0; 8]));
                        let now = epoch.elapsed().as_micros() as u64;
                        lat.push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                        if let Some((newest, _)) = &receipts {
                            newest.send_replace(Some((m.conversation_id, m.seq)));
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            if let Some((newest, task)) = receipts {
                drop(newest);
                let _ = task.await;
            }
            lat
        }));
        let args = args.clone();
        senders.push(tokio::spawn(async move {
            let window = Arc::new(Semaphore::new(args.window.max(1)));
            let samples = Arc::new(std::sync::Mutex::new(Samples::default()));
            let mut next = Instant::now();
            let mut inflight = Vec::new();
            while Instant::now() < stop_at {
                if per_client_rate > 0.0 {
                    next += Duration::from_secs_f64(1.0 / per_client_rate);
                    tokio::time::sleep_until(next.into()).await;
                }
                let Ok(permit) = window.clone().acquire_owned().await else { break };
                let (c, peer, s) = (client.clone(), peer.clone(), samples.clone());
                let body = timestamped_body(epoch, args.body_bytes);
                inflight.push(tokio::spawn(async move {
                    let t0 = Instant::now();
                    let r = c.send(Target::Peer(peer), "application/octet-stream", body).await;
                    let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Ok(_) => {
                            s.ack_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32)
                        }
                        Err(_) => s.errors += 1,
                    }
                    drop(permit);
                }));
                if inflight.len() > 4096 {
                    inflight.retain(|h| !h.is_finished());
                }
            }
            for h in inflight {
                let _ = h.await;
            }
            let s = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
            (s, client)
        }));
    }
    let started = Instant::now();
    let mut all = Samples::default();
    let mut clients = Vec::new();
    for s in senders {
        let (mut s, c) = s.await?;
        all.ack_us.append(&mut s.ack_us);
        all.errors += s.errors;
        clients.push(c);
    }
    let elapsed = started.elapsed().as_secs_f64();
    for r in receivers {
        all.deliver_us.append(&mut r.await?);
    }
    for c in clients {
        c.close().await;
    }
    report(&args, &addr, elapsed, all);
    Ok(())
}

/// The receipt sender of one client: the receiver puts the newest (conversation, seq) it got
/// in the watch; the task sends DELIVERED for it, one receipt in flight at a time, so a burst
/// of messages costs one receipt. It ends when the watch's sender is dropped.
fn receipts(
    client: Client,
) -> (tokio::sync::watch::Sender<Option<(String, u64)>>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = tokio::sync::watch::channel(None::<(String, u64)>);
    let task = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let newest = rx.borrow_and_update().clone();
            if let Some((conversation, seq)) = newest {
                // A failed receipt is retried with the next message; the bench counts sends.
                let _ = client.mark_delivered(&conversation, seq).await;
            }
        }
    });
    (tx, task)
}

fn timestamped_body(epoch: Instant, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len.max(8));
    b.put_u64(epoch.elapsed().as_micros() as u64);
    b.resize(len.max(8), b'.');
    b.freeze()
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn report(args: &BenchArgs, addr: &str, elapsed: f64, mut s: Samples) {
    s.ack_us.sort_unstable();
    s.deliver_us.sort_unstable();
    let acked = s.ack_us.len();
    let rate = acked as f64 / elapsed;
    let row = |name: &str, v: &[u32]| {
        println!(
            "{name:<16} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            v.len(),
            pct(v, 0.50),
            pct(v, 0.99),
            pct(v, 0.999),
            v.last().copied().unwrap_or(0) as f64 / 1000.0
        )
    };
    println!(
        "tern bench: {} clients ({} pairs) → {addr}, window {}, rate {}, body {} B, {:.1} s",
        args.pairs * 2,
        args.pairs,
        args.window,
        if args.rate == 0 { "max".to_string() } else { format!("{}/s", args.rate) },
        args.body_bytes,
        elapsed
    );
    println!("persisted (acked) msgs/s: {rate:.0}   send errors: {}", s.errors);
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "p50", "p99", "p999", "max"
    );
    row("send→ack", &s.ack_us);
    row("send→deliver", &s.deliver_us);
    println!(
        "{{\"clients\":{},\"window\":{},\"rate\":{},\"body_bytes\":{},\"seconds\":{:.3},\"acked\":{},\"msgs_per_s\":{:.0},\"errors\":{},\"ack_ms\":{{\"p50\":{:.3},\"p99\":{:.3},\"p999\":{:.3}}},\"deliver_ms\":{{\"p50\":{:.3},\"p99\":{:.3},\"p999\":{:.3}}},\"delivered\":{}}}",
        args.pairs * 2,
        args.window,
        args.rate,
        args.body_bytes,
        elapsed,
        acked,
        rate,
        s.errors,
        pct(&s.ack_us, 0.5),
        pct(&s.ack_us, 0.99),
        pct(&s.ack_us, 0.999),
        pct(&s.deliver_us, 0.5),
        pct(&s.deliver_us, 0.99),
        pct(&s.deliver_us, 0.999),
        s.deliver_us.len()
    );
}
