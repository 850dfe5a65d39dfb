//! Commit-path candidates on one workload: redb-direct, wal+index (tern-store) and fjall.
//!
//! For each design, on a fresh directory: (a) latency, single-message groups committed one
//! after another; (b) throughput, groups of `--group-size` messages. Each group also carries
//! one coalesced receipt watermark. Every group is durable (fsync/fdatasync) when it returns.
//! See README.md.

mod designs;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_proto::v1;
use tern_store::{NewMessage, WatermarkWrite, Write};

pub const CONVERSATIONS: usize = 100;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One commit-path design: `commit` stores a group and returns once it is durable.
pub trait Design {
    fn name(&self) -> &'static str;
    fn commit(&mut self, batch: &[Write]) -> Result<()>;
    /// Delivered watermark to send for this conversation (the last seq acknowledged).
    fn last_acked(&self, conv: usize) -> u64;
}

struct Opts {
    lat_groups: usize,
    group_size: usize,
    tput_msgs: usize,
    only: Option<String>,
    dir: PathBuf,
}

fn parse() -> Result<Opts> {
    let mut o = Opts {
        lat_groups: 2000,
        group_size: 256,
        tput_msgs: 200_000,
        only: None,
        dir: std::env::temp_dir().join("tern-candidates-data"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut v = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--groups" => o.lat_groups = v()?.parse()?,
            "--group-size" => o.group_size = v()?.parse()?,
            "--messages" => o.tput_msgs = v()?.parse()?,
            "--only" => o.only = Some(v()?),
            "--dir" => o.dir = PathBuf::from(v()?),
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    Ok(o)
}

/// Process CPU (user + system, all threads) in seconds.
fn cpu_s() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Bytes this process caused to be written to the block layer (/proc/self/io write_bytes).
fn write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes: ").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0)
}

/// Bytes written by the block device holding /work (`vda`), by every process on the machine.
fn disk_written() -> u64 {
    std::fs::read_to_string("/proc/diskstats")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"vda")).then(|| f.get(9).and_then(|v| v.parse::<u64>().ok()))?
            })
        })
        .map_or(0, |sectors| sectors * 512)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// 200-byte pwrite + fdatasync loop in `dir`: p50/p99 in ms.
fn fsync_probe(dir: &Path) -> Result<(f64, f64)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("fsync-probe");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let buf = [7u8; 200];
    let mut t = Vec::with_capacity(500);
    for i in 0..500u64 {
        let s = Instant::now();
        f.write_at(&buf, i * 200)?;
        f.sync_data()?;
        t.push(s.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    t.sort();
    Ok((pct(&t, 0.5), pct(&t, 0.99)))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Builds the next group: `size` messages round-robin over the conversations, then one
/// delivered receipt (receiver b{i} of the group's first conversation, up to what was acked).
fn group(next: &mut u64, size: usize, body: &Bytes, d: &dyn Design) -> Vec<Write> {
    let mut w = Vec::with_capacity(size + 1);
    let first = (*next as usize) % CONVERSATIONS;
    for _ in 0..size {
        let n = *next;
        *next += 1;
        let i = (n as usize) % CONVERSATIONS;
        w.push(Write::Append(NewMessage {
            conversation_id: format!("dm:a{i}:b{i}"),
            members: vec![format!("a{i}"), format!("b{i}")],
            sender_user_id: format!("a{i}"),
            sender_device_id: "d1".to_owned(),
            client_msg_id: format!("cm-{n}"),
            kind: v1::MessageKind::Normal,
            content_type: "text/plain".to_owned(),
            body: body.clone(),
            recalled_seq: 0,
            server_time_ms: 1_700_000_000_000 + n as i64,
        }));
    }
    w.push(Write::Watermark(WatermarkWrite {
        conversation_id: format!("dm:a{first}:b{first}"),
        user_id: format!("b{first}"),
        kind: v1::ReceiptKind::Delivered,
        seq: d.last_acked(first),
    }));
    w
}

struct Phase {
    msgs: usize,
    wall: f64,
    cpu: f64,
    cpu_close: f64,
    bytes: u64,
    bytes_close: u64,
    dev: u64,
    lat: Vec<Duration>,
}

fn run_phase(name: &str, dir: &Path, groups: usize, size: usize, body: &Bytes) -> Result<Phase> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut d = designs::open(name, dir)?;
    // Warm-up (not measured): every conversation exists, so the run measures steady state.
    let mut next = 0u64;
    for _ in 0..2 {
        let b = group(&mut next, CONVERSATIONS, body, d.as_ref());
        d.commit(&b)?;
    }
    // Let background work from open settle (the log zero-fills its next 64 MiB segment; fjall
    // and the index start threads): the phase measures steady state. A server pays one
    // segment fill per 64 MiB of log; the throughput phase includes the fills it causes.
    std::thread::sleep(Duration::from_secs(3));
    let (c0, b0, t0) = (cpu_s(), write_bytes(), Instant::now());
    let disk0 = disk_written();
    let mut lat = Vec::with_capacity(groups);
    for _ in 0..groups {
        let b = group(&mut next, size, body, d.as_ref());
        let s = Instant::now();
        d.commit(&b)?;
        lat.push(s.elapsed());
    }
    let wall = t0.elapsed().as_secs_f64();
    let (c1, b1, dev) = (cpu_s(), write_bytes(), disk_written() - disk0);
    drop(d); // close: the index applies what it has not, fjall flushes
    let (c2, b2) = (cpu_s(), write_bytes());
    lat.sort();
    Ok(Phase {
        msgs: groups * size,
        wall,
        cpu: c1 - c0,
        cpu_close: c2 - c0,
        bytes: b1 - b0,
        bytes_close: b2 - b0,
        dev,
        lat,
    })
}

fn main() -> Result<()> {
    let o = parse()?;
    let body = Bytes::from(vec![b'x'; 64]);
    let names = ["redb-direct", "wal+index", "fjall"];
    let (p50, p99) = fsync_probe(&o.dir)?;
    println!(
        "dir {} | load {} | fsync probe (200 B pwrite+fdatasync) p50 {p50:.3} ms p99 {p99:.3} ms",
        o.dir.display(),
        loadavg()
    );
    println!(
        "{:<12} {:<5} {:>7} {:>7} {:>7} {:>7} {:>8} {:>10} {:>7} {:>8} {:>8} {:>8}",
        "design",
        "phase",
        "msgs",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "msg/s",
        "CPU-s/100k",
        "+close",
        "io KB/m",
        "+close",
        "dev KB/m"
    );
    for name in names {
        if o.only.as_deref().is_some_and(|x| x != name) {
            continue;
        }
        let dir = o.dir.join(name.replace('+', "-"));
        let tput_groups = o.tput_msgs.div_ceil(o.group_size);
        for (phase, groups, size) in [("lat", o.lat_groups, 1), ("tput", tput_groups, o.group_size)]
        {
            let r = run_phase(name, &dir, groups, size, &body)?;
            let per100k = |c: f64| c / r.msgs as f64 * 100_000.0;
            let kb = |b: u64| b as f64 / r.msgs as f64 / 1024.0;
            println!(
                "{:<12} {:<5} {:>7} {:>7.3} {:>7.3} {:>7.3} {:>8.0} {:>10.2} {:>7.2} {:>8.2} {:>8.2} {:>8.2}",
                name,
                phase,
                r.msgs,
                pct(&r.lat, 0.5),
                pct(&r.lat, 0.99),
                pct(&r.lat, 0.999),
                r.msgs as f64 / r.wall,
                per100k(r.cpu),
                per100k(r.cpu_close),
                kb(r.bytes),
                kb(r.bytes_close),
                kb(r.dev),
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (p50, p99) = fsync_probe(&o.dir)?;
    println!("after: load {} | fsync probe p50 {p50:.3} ms p99 {p99:.3} ms", loadavg());
    Ok(())
}
