//! Memory of idle QUIC connections in [`QuicHost`] with the gateway's settings, over real UDP.
//!
//! ```text
//! cargo run --release -p tern-gateway --example quic_density -- server 127.0.0.1:7460 /tmp/cert.der
//! cargo run --release -p tern-gateway --example quic_density -- client 127.0.0.1:7460 /tmp/cert.der 10000
//! ```
//!
//! The server is one thread driving one `QuicHost` over a blocking UDP socket; every chunk a
//! client sends on its stream is echoed back (a stand-in for Login → LoginOk). Each second it
//! prints the connections it holds, its RSS (/proc/self/statm) and its live heap (counted by
//! its allocator); once the count stops changing it prints bytes per connection over its
//! start. The client (quinn, one UDP socket) opens N connections, 64 at a time, sends 64 bytes
//! on each, waits for the echo, then holds them all for 20 s and exits. This measures the
//! transport (quinn-proto + rustls + the host's table), not a logged-in session. With
//! `QUIC_DENSITY_EXIT=1` the server exits after printing the figure (for heap profilers).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tern_gateway::quic::{HandshakeLimits, HostEvent, QuicHost, QuicSettings, config};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, addr, cert) = match &args[..] {
        [_, m, a, c, ..] => (m.as_str(), a.parse::<SocketAddr>().expect("address"), c.clone()),
        _ => {
            eprintln!("usage: quic_density server|client ADDR CERT_FILE [N]");
            std::process::exit(2);
        }
    };
    match mode {
        "server" => server(addr, &cert),
        "client" => client(addr, &cert, args.get(4).and_then(|n| n.parse().ok()).unwrap_or(10_000)),
        _ => eprintln!("mode: server or client"),
    }
}

fn server(addr: SocketAddr, cert_file: &str) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
    std::fs::write(cert_file, c.cert.der()).expect("write the certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.signing_key.serialize_der()));
    let settings = QuicSettings::default();
    let tls = config::tls(vec![c.cert.der().clone()], key, &settings).expect("tls");
    let mut host = QuicHost::new(
        config::endpoint(0, 1, &[9; 32]),
        config::server(tls, &settings).expect("server config"),
        200_000,
        // Every client comes from this host, as fast as it can: no handshake caps.
        HandshakeLimits { retry: usize::MAX, max: usize::MAX, per_source: 0 },
    );
    let sock = UdpSocket::bind(addr).expect("bind");
    let (rss0, heap0) = (rss(), LIVE.load(Relaxed));
    println!("start: rss {rss0} B, heap {heap0} B");
    let mut buf = vec![0u8; 65_536];
    let mut last_print = Instant::now();
    let (mut last_count, mut stable_secs) = (0, 0);
    loop {
        let now = Instant::now();
        let wait = host.next_timeout().map(|t| t.saturating_duration_since(now));
        let wait = wait
            .unwrap_or(Duration::from_millis(100))
            .clamp(Duration::from_micros(100), Duration::from_millis(100));
        sock.set_read_timeout(Some(wait)).expect("timeout");
        let mut got = 0;
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            host.handle(Instant::now(), from, None, None, BytesMut::from(&buf[..n]));
            got += 1;
            if got == 64 {
                break;
            }
            sock.set_read_timeout(Some(Duration::from_micros(1))).expect("timeout");
        }
        let now = Instant::now();
        host.handle_timeouts(now);
        while let Some(ev) = host.poll_event(now) {
            if let HostEvent::Data { conn, data, .. } = ev {
                let _ = host.write(conn, &data);
            }
        }
        while let Some(t) = host.poll_transmit(now) {
            let _ = sock.send_to(&t.data, t.destination);
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let (n, r, h) = (host.connections(), rss(), LIVE.load(Relaxed));
            println!("connections {n}: rss {r} B, heap {h} B");
            stable_secs = if n == last_count && n > 0 { stable_secs + 1 } else { 0 };
            last_count = n;
            if stable_secs == 5 {
                let per = |now: usize, start: usize| (now - start) as f64 / n as f64;
                println!(
                    "idle: {n} connections, {:.0} B RSS and {:.0} B heap per connection",
                    per(r, rss0),
                    per(h as usize, heap0 as usize)
                );
                if std::env::var_os("QUIC_DENSITY_EXIT").is_some() {
                    return;
                }
            }
        }
    }
}

fn client(addr: SocketAddr, cert_file: &str, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let der = std::fs::read(cert_file).expect("read the certificate");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(der)).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![config::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(15)));
        cfg.transport_config(Arc::new(transport));
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint");
        ep.set_default_client_config(cfg);
        let started = Instant::now();
        let mut held = Vec::with_capacity(n);
        let mut i = 0;
        while i < n {
            let batch: Vec<_> = (i..n.min(i + 64))
                .map(|_| {
                    let ep = ep.clone();
                    tokio::spawn(async move {
                        let conn = ep.connect(addr, "localhost").ok()?.await.ok()?;
                        let (mut tx, mut rx) = conn.open_bi().await.ok()?;
                        tx.write_all(&[7u8; 64]).await.ok()?;
                        let mut echo = [0u8; 64];
                        rx.read_exact(&mut echo).await.ok()?;
                        Some((conn, tx, rx))
                    })
                })
                .collect();
            for t in batch {
                if let Ok(Some(c)) = t.await {
                    held.push(c);
                }
            }
            i += 64;
        }
        println!(
            "{} of {n} connections up in {:.1} s; holding 20 s",
            held.len(),
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(20)).await;
        drop(held);
    });
}
