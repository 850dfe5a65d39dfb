//! [`Cluster`]: a whole distributed-mode Tern on loopback, as child processes a test can kill
//! and restart: a presence redis-server (no AOF), a store redis-server (AOF, `appendfsync
//! always`), N `tern dispatch` workers and M `tern gateway`s sharing one random HS256 key.
//!
//! # Layout
//!
//! - Workers `W0..`: `tern dispatch --id Wi --link-listen A --http-listen H --data-dir D
//!   --set store.backend=redis --set store.redis_url=STORE --set cluster.presence_redis=PRES
//!   --set auth.hs256_key=KEY --set server.log=LOG`.
//! - Gateways `G0..`: `tern gateway --id Gi --listen A --http-listen H --data-dir D
//!   --set cluster.presence_redis=PRES --set auth.hs256_key=KEY --set server.log=LOG`, plus
//!   `--set cluster.dispatch_workers=L0,L1,..` (the workers' link addresses) with
//!   [`Discovery::Static`]; with [`Discovery::Presence`] they find the workers in presence Redis.
//!
//! Listen ports are picked below the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), so the port of a killed process cannot be taken
//! meanwhile by the source port of some outgoing loopback connection, and a restart comes back
//! on the same address (gateways' static worker lists and reconnecting clients stay valid).
//!
//! Tokens: this crate does not depend on the gateway crate; tests mint tokens with
//! `tern_gateway::TokenKey::from_base64(cluster.key_base64())`.
//!
//! Links: every process gets `--set cluster.secret=SECRET` (32 random bytes, base64,
//! [`Cluster::secret_base64`]) before the per-role `gateway_sets` / `worker_sets`, which may
//! override it (e.g. a worker with another secret).
//!
//! Everything here blocks (bounded waits); from an async test call it from
//! `tokio::task::spawn_blocking` or `block_in_place`. Dropping the cluster kills the gateways,
//! then the workers (SIGKILL), then both redis-servers, and removes every directory.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tempfile::TempDir;
use thiserror::Error;

use crate::metrics::{HttpError, Metrics, http_get};
use crate::process::{ProcessError, ProcessOptions, TernProcess};
use crate::redis_server::{RedisOptions, RedisServer, TestkitError};

/// How often [`Cluster::wait_healthy`] looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Per-request bound of the HTTP helpers.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports a first start tries when a picked one was taken meanwhile.
const PORT_ATTEMPTS: usize = 8;

/// How gateways find the dispatch workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Discovery {
    /// `cluster.dispatch_workers` lists every worker's link address.
    #[default]
    Static,
    /// No list: gateways discover workers in presence Redis.
    Presence,
}

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of `tern gateway` processes. Default 2.
    pub gateways: usize,
    /// Number of `tern dispatch` processes. Default 2.
    pub workers: usize,
    /// How gateways find workers. Default [`Discovery::Static`].
    pub discovery: Discovery,
    /// `server.log` of every process. Default `warn` (logs are kept in a bounded ring).
    pub log: String,
    /// Extra `--set` values for every gateway, e.g. `gateway.idle_timeout=5s`.
    pub gateway_sets: Vec<String>,
    /// Extra `--set` values for every worker.
    pub worker_sets: Vec<String>,
    /// Child process options (timeouts, log ring size, environment); the label is set per
    /// process (`worker W0`, `gateway G1`).
    pub process: ProcessOptions,
    /// The store redis-server. Default: AOF with `appendfsync always`.
    pub store_redis: RedisOptions,
    /// The presence redis-server. Default: no AOF.
    pub presence_redis: RedisOptions,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            gateways: 2,
            workers: 2,
            discovery: Discovery::Static,
            log: "warn".into(),
            gateway_sets: Vec::new(),
            worker_sets: Vec::new(),
            process: ProcessOptions::default(),
            store_redis: RedisOptions::default(),
            presence_redis: RedisOptions::without_aof(),
        }
    }
}

/// What went wrong while running a cluster.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// A redis-server failed.
    #[error("{which} redis: {source}")]
    Redis { which: &'static str, source: TestkitError },
    /// A tern process failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A tern process announced itself without an address the cluster needs.
    #[error("{label} announced no {key}= address: {line:?}")]
    NoAddress { label: String, key: &'static str, line: String },
    /// An HTTP request to a process failed.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// Not every process answered `/healthz` with 200 in time.
    #[error("not healthy within {waited:?}: {what}\n{logs}")]
    NotHealthy { waited: Duration, what: String, logs: String },
    /// A local I/O step failed (directories, ports, randomness).
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    /// The caller asked for something that does not exist (e.g. worker 5 of 2).
    #[error("no {kind} {index}: the cluster has {count}")]
    NoSuchProcess { kind: &'static str, index: usize, count: usize },
}

/// Which kind of tern process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Worker,
    Gateway,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Gateway => "gateway",
        }
    }
}

/// A running distributed-mode Tern. See the module doc.
#[derive(Debug)]
pub struct Cluster {
    tern_bin: PathBuf,
    options: ClusterOptions,
    key_base64: String,
    secret_base64: String,
    // Drop order matters: gateways, then workers, then Redis, then the directories.
    gateways: Vec<TernProcess>,
    workers: Vec<TernProcess>,
    store_redis: RedisServer,
    presence_redis: RedisServer,
    root: TempDir,
}

impl Cluster {
    /// Starts Redis, the workers, then the gateways, each waited for until it announces its
    /// addresses. It does not wait for the gateways to be linked to the workers; see
    /// [`wait_healthy`](Self::wait_healthy).
    pub fn start(tern_bin: &Path, options: ClusterOptions) -> Result<Self, ClusterError> {
        let presence_redis = RedisServer::start_with(options.presence_redis.clone())
            .map_err(|source| ClusterError::Redis { which: "presence", source })?;
        let store_redis = RedisServer::start_with(options.store_redis.clone())
            .map_err(|source| ClusterError::Redis { which: "store", source })?;
        let root = tempfile::Builder::new()
            .prefix("tern-cluster-")
            .tempdir()
            .map_err(|source| ClusterError::Io { what: "create the cluster directory", source })?;
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| ClusterError::Io {
            what: "draw a random HS256 key",
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut link_secret = [0u8; 32];
        getrandom::fill(&mut link_secret).map_err(|e| ClusterError::Io {
            what: "draw a random cluster secret",
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut cluster = Self {
            tern_bin: tern_bin.to_owned(),
            key_base64: URL_SAFE_NO_PAD.encode(secret),
            secret_base64: URL_SAFE_NO_PAD.encode(link_secret),
            options,
            gateways: Vec::new(),
            workers: Vec::new(),
            store_redis,
            presence_redis,
            root,
        };
        for i in 0..cluster.options.workers {
            let worker = cluster.spawn_role(Role::Worker, i)?;
            cluster.workers.push(worker);
        }
        for i in 0..cluster.options.gateways {
            let gateway = cluster.spawn_role(Role::Gateway, i)?;
            cluster.gateways.push(gateway);
        }
        Ok(cluster)
    }

    /// The HS256 key every process verifies tokens with, as URL-safe base64 (no padding).
    pub fn key_base64(&self) -> &str {
        &self.key_base64
    }

    /// The cluster secret every link is authenticated with (`cluster.secret`), URL-safe base64.
    pub fn secret_base64(&self) -> &str {
        &self.secret_base64
    }

    /// The options the cluster was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// The cluster's own directory (the processes' data directories live under it).
    pub fn dir(&self) -> &Path {
        self.root.path()
    }

    /// Gateway `i`'s client address (the same across restarts).
    pub fn gateway_addr(&self, i: usize) -> SocketAddr {
        address(&self.gateways[i], "client")
    }

    /// Every gateway's client address, in order.
    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        (0..self.gateways.len()).map(|i| self.gateway_addr(i)).collect()
    }

    /// Worker `i`'s link address (the same across restarts).
    pub fn worker_link_addr(&self, i: usize) -> SocketAddr {
        address(&self.workers[i], "link")
    }

    /// Gateway `i`'s HTTP address.
    pub fn gateway_http(&self, i: usize) -> SocketAddr {
        address(&self.gateways[i], "http")
    }

    /// Worker `i`'s HTTP address.
    pub fn worker_http(&self, i: usize) -> SocketAddr {
        address(&self.workers[i], "http")
    }

    /// Gateway process `i` (for its logs, pid, announcement).
    pub fn gateway(&self, i: usize) -> &TernProcess {
        &self.gateways[i]
    }

    /// Gateway process `i`, to signal it directly.
    pub fn gateway_mut(&mut self, i: usize) -> &mut TernProcess {
        &mut self.gateways[i]
    }

    /// Worker process `i`.
    pub fn worker(&self, i: usize) -> &TernProcess {
        &self.workers[i]
    }

    /// Worker process `i`, to signal it directly.
    pub fn worker_mut(&mut self, i: usize) -> &mut TernProcess {
        &mut self.workers[i]
    }

    /// Number of gateways.
    pub fn gateway_count(&self) -> usize {
        self.gateways.len()
    }

    /// Number of workers.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The store redis-server (kill -9 it, stop it, send it commands).
    pub fn store_redis(&mut self) -> &mut RedisServer {
        &mut self.store_redis
    }

    /// The presence redis-server.
    pub fn presence_redis(&mut self) -> &mut RedisServer {
        &mut self.presence_redis
    }

    /// `redis://` URL of the store.
    pub fn store_url(&self) -> String {
        self.store_redis.url()
    }

    /// `redis://` URL of presence.
    pub fn presence_url(&self) -> String {
        self.presence_redis.url()
    }

    /// SIGKILL worker `i`.
    pub fn kill9_worker(&mut self, i: usize) -> Result<(), ClusterError> {
        Ok(self.process_mut(Role::Worker, i)?.kill9()?)
    }

    /// SIGTERM worker `i` and wait for it to exit.
    pub fn terminate_worker(&mut self, i: usize) -> Result<(), ClusterError> {
        self.process_mut(Role::Worker, i)?.terminate()?;
        Ok(())
    }

    /// Starts worker `i` again on the same link and HTTP addresses (stopping it with SIGTERM
    /// first if it still runs).
    pub fn restart_worker(&mut self, i: usize) -> Result<(), ClusterError> {
        Ok(self.process_mut(Role::Worker, i)?.restart()?)
    }

    /// SIGKILL gateway `i`.
    pub fn kill9_gateway(&mut self, i: usize) -> Result<(), ClusterError> {
        Ok(self.process_mut(Role::Gateway, i)?.kill9()?)
    }

    /// SIGTERM gateway `i` and wait for it to exit.
    pub fn terminate_gateway(&mut self, i: usize) -> Result<(), ClusterError> {
        self.process_mut(Role::Gateway, i)?.terminate()?;
        Ok(())
    }

    /// Starts gateway `i` again on the same client and HTTP addresses (stopping it with
    /// SIGTERM first if it still runs).
    pub fn restart_gateway(&mut self, i: usize) -> Result<(), ClusterError> {
        Ok(self.process_mut(Role::Gateway, i)?.restart()?)
    }

    /// Restarts the store redis-server (SIGTERM, start again on the same port; the AOF is
    /// replayed).
    pub fn restart_store_redis(&mut self) -> Result<(), ClusterError> {
        self.store_redis.restart().map_err(|source| ClusterError::Redis { which: "store", source })
    }

    /// Restarts the presence redis-server; without AOF it comes back empty.
    pub fn restart_presence_redis(&mut self) -> Result<(), ClusterError> {
        self.presence_redis
            .restart()
            .map_err(|source| ClusterError::Redis { which: "presence", source })
    }

    /// Deletes everything in presence Redis (`FLUSHALL`) while it keeps running.
    pub fn flush_presence_redis(&mut self) -> Result<(), ClusterError> {
        self.presence_redis
            .flushall()
            .map_err(|source| ClusterError::Redis { which: "presence", source })
    }

    /// Scrapes gateway `i`'s `/metrics`.
    pub fn gateway_metrics(&self, i: usize) -> Result<Metrics, ClusterError> {
        Ok(Metrics::scrape(self.gateway_http(i), HTTP_TIMEOUT)?)
    }

    /// Scrapes worker `i`'s `/metrics`.
    pub fn worker_metrics(&self, i: usize) -> Result<Metrics, ClusterError> {
        Ok(Metrics::scrape(self.worker_http(i), HTTP_TIMEOUT)?)
    }

    /// Waits until every running process answers `GET /healthz` with 200 (what "healthy"
    /// means is the process's own business, e.g. a gateway linked to a worker).
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut sick = Vec::new();
            for process in self.workers.iter_mut().chain(self.gateways.iter_mut()) {
                if !process.is_running() {
                    continue;
                }
                let Some(http) = process.http_addr() else { continue };
                match http_get(http, "/healthz", HTTP_TIMEOUT) {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => sick.push(format!("{}: {} {}", process.label(), r.status, r.body)),
                    Err(e) => sick.push(format!("{}: {e}", process.label())),
                }
            }
            if sick.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NotHealthy {
                    waited: timeout,
                    what: sick.join("; "),
                    logs: self.logs(),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The log tails of every process, workers first, for panic messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for process in self.workers.iter().chain(&self.gateways) {
            out.push_str(&format!("===== {} =====\n{}", process.label(), process.logs()));
        }
        out
    }

    fn process_mut(&mut self, role: Role, i: usize) -> Result<&mut TernProcess, ClusterError> {
        let list = match role {
            Role::Worker => &mut self.workers,
            Role::Gateway => &mut self.gateways,
        };
        let count = list.len();
        list.get_mut(i).ok_or(ClusterError::NoSuchProcess { kind: role.name(), index: i, count })
    }

    /// Starts one process on fresh ports, trying new ports if one was taken meanwhile.
    fn spawn_role(&self, role: Role, i: usize) -> Result<TernProcess, ClusterError> {
        let (id, key) = match role {
            Role::Worker => (format!("W{i}"), "link"),
            Role::Gateway => (format!("G{i}"), "client"),
        };
        let data_dir = self.root.path().join(&id);
        std::fs::create_dir_all(&data_dir)
            .map_err(|source| ClusterError::Io { what: "create a data directory", source })?;
        let mut attempt = 0;
        let process = loop {
            attempt += 1;
            let args = self.args(role, &id, &data_dir, reserve_port()?, reserve_port()?);
            let mut options = self.options.process.clone();
            options.label = Some(format!("{} {id}", role.name()));
            match TernProcess::spawn_with(&self.tern_bin, args, options) {
                Err(ProcessError::Exited { logs, .. })
                    if attempt < PORT_ATTEMPTS && logs.contains("Address already in use") => {}
                result => break result?,
            }
        };
        for key in [key, "http"] {
            if process.addr(key).is_none() {
                return Err(ClusterError::NoAddress {
                    label: process.label().to_owned(),
                    key,
                    line: process.announcement().line().to_owned(),
                });
            }
        }
        Ok(process)
    }

    fn args(
        &self,
        role: Role,
        id: &str,
        data_dir: &Path,
        port: u16,
        http_port: u16,
    ) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        let listen = format!("127.0.0.1:{port}");
        let http = format!("127.0.0.1:{http_port}");
        match role {
            Role::Worker => push(&["dispatch", "--id", id, "--link-listen", &listen]),
            Role::Gateway => push(&["gateway", "--id", id, "--listen", &listen]),
        }
        push(&["--http-listen", &http]);
        args.push("--data-dir".into());
        args.push(data_dir.into());
        let mut sets = vec![
            format!("cluster.presence_redis={}", self.presence_redis.url()),
            format!("auth.hs256_key={}", self.key_base64),
            format!("cluster.secret={}", self.secret_base64),
            format!("server.log={}", self.options.log),
        ];
        match role {
            Role::Worker => {
                sets.push("store.backend=redis".into());
                sets.push(format!("store.redis_url={}", self.store_redis.url()));
                sets.extend(self.options.worker_sets.iter().cloned());
            }
            Role::Gateway => {
                if self.options.discovery == Discovery::Static {
                    let links: Vec<String> =
                        self.workers.iter().map(|w| address(w, "link").to_string()).collect();
                    sets.push(format!("cluster.dispatch_workers={}", links.join(",")));
                }
                sets.extend(self.options.gateway_sets.iter().cloned());
            }
        }
        for set in sets {
            args.push("--set".into());
            args.push(set.into());
        }
        args
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Gateways first, so that clients see them go before the workers behind them.
        self.gateways.clear();
        self.workers.clear();
    }
}

/// An address the process is known to have announced (checked at spawn).
fn address(process: &TernProcess, key: &str) -> SocketAddr {
    process.addr(key).unwrap_or_else(|| panic!("{} announced no {key}= address", process.label()))
}

pub use crate::ports::ephemeral_port_range;

/// A loopback port outside the ephemeral range that was free a moment ago.
pub fn reserve_port() -> Result<u16, ClusterError> {
    crate::ports::reserve_port()
        .map_err(|source| ClusterError::Io { what: "reserve a port", source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn reserved_ports_are_outside_the_ephemeral_range_and_free() {
        let (low, high) = ephemeral_port_range();
        assert!(low <= high);
        for _ in 0..20 {
            let port = reserve_port().unwrap();
            if low > 11_000 {
                assert!(port < low, "{port} in the ephemeral range {low}-{high}");
            }
            // Free: we can bind it ourselves now.
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }

    /// A fake `tern`: a shell script announcing what a real one would, from its arguments
    /// (`--listen`/`--link-listen`/`--http-listen` values are echoed back as the bound
    /// addresses), and writing its whole command line to stderr.
    fn fake_tern(dir: &Path) -> PathBuf {
        let path = dir.join("fake-tern");
        let script = r#"#!/bin/sh
sub=$1; shift
id=; listen=; http=
while [ $# -gt 0 ]; do
    case "$1" in
        --id) id=$2; shift ;;
        --listen|--link-listen) listen=$2; shift ;;
        --http-listen) http=$2; shift ;;
    esac
    shift
done
case "$sub" in
    dispatch) echo "tern dispatch listening link=$listen http=$http id=$id" ;;
    gateway) echo "tern gateway listening client=$listen http=$http id=$id" ;;
esac
exec sleep 600
"#;
        std::fs::write(&path, script).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).unwrap();
        path
    }

    #[test]
    fn wires_workers_and_gateways_together() {
        let bin_dir = tempfile::tempdir().unwrap();
        let bin = fake_tern(bin_dir.path());
        let mut cluster = Cluster::start(&bin, ClusterOptions::default()).unwrap();
        assert_eq!((cluster.worker_count(), cluster.gateway_count()), (2, 2));
        assert_ne!(cluster.gateway_addr(0), cluster.gateway_addr(1));
        // Gateways got the workers' link addresses statically, and everybody the same key.
        let links = format!(
            "cluster.dispatch_workers={},{}",
            cluster.worker_link_addr(0),
            cluster.worker_link_addr(1)
        );
        let key = format!("auth.hs256_key={}", cluster.key_base64());
        for i in 0..2 {
            let g: Vec<String> =
                cluster.gateway(i).args().iter().map(|a| a.to_string_lossy().into()).collect();
            assert!(g.contains(&links), "{g:?}");
            assert!(g.contains(&key), "{g:?}");
            assert!(g.contains(&format!("cluster.presence_redis={}", cluster.presence_url())));
            let w: Vec<String> =
                cluster.worker(i).args().iter().map(|a| a.to_string_lossy().into()).collect();
            assert!(w.contains(&format!("store.redis_url={}", cluster.store_url())), "{w:?}");
            assert!(w.contains(&"store.backend=redis".to_owned()), "{w:?}");
            assert!(w.contains(&key), "{w:?}");
            let secret = format!("cluster.secret={}", cluster.secret_base64());
            assert!(w.contains(&secret) && g.contains(&secret), "{w:?} {g:?}");
            assert_eq!(cluster.worker(i).id(), Some(format!("W{i}").as_str()));
        }
        // The key is 32 random bytes.
        assert_eq!(URL_SAFE_NO_PAD.decode(cluster.key_base64()).unwrap().len(), 32);
        // Kill and restart: same addresses, new process.
        let link = cluster.worker_link_addr(1);
        let pid = cluster.worker(1).pid().unwrap();
        cluster.kill9_worker(1).unwrap();
        assert!(matches!(cluster.kill9_worker(1), Err(ClusterError::Process(_))));
        cluster.restart_worker(1).unwrap();
        assert_eq!(cluster.worker_link_addr(1), link);
        assert_ne!(cluster.worker(1).pid().unwrap(), pid);
        let client = cluster.gateway_addr(0);
        cluster.restart_gateway(0).unwrap();
        assert_eq!(cluster.gateway_addr(0), client);
        assert!(matches!(
            cluster.kill9_gateway(7),
            Err(ClusterError::NoSuchProcess { kind: "gateway", index: 7, count: 2 })
        ));
        // Redis controls.
        cluster.presence_redis().command(&[b"SET", b"k", b"v"]).unwrap();
        cluster.flush_presence_redis().unwrap();
        cluster.restart_presence_redis().unwrap();
        cluster.restart_store_redis().unwrap();
        assert!(cluster.logs().contains("===== gateway G1 ====="));
    }

    #[test]
    fn discovery_mode_gives_gateways_no_worker_list() {
        let bin_dir = tempfile::tempdir().unwrap();
        let bin = fake_tern(bin_dir.path());
        let options = ClusterOptions {
            gateways: 1,
            workers: 1,
            discovery: Discovery::Presence,
            ..ClusterOptions::default()
        };
        let cluster = Cluster::start(&bin, options).unwrap();
        let g: Vec<String> =
            cluster.gateway(0).args().iter().map(|a| a.to_string_lossy().into()).collect();
        assert!(!g.iter().any(|a| a.starts_with("cluster.dispatch_workers=")), "{g:?}");
    }

    #[test]
    fn drop_stops_every_process() {
        let bin_dir = tempfile::tempdir().unwrap();
        let bin = fake_tern(bin_dir.path());
        let options = ClusterOptions { gateways: 1, workers: 1, ..ClusterOptions::default() };
        let mut cluster = Cluster::start(&bin, options).unwrap();
        let pids = [
            cluster.worker(0).pid().unwrap(),
            cluster.gateway(0).pid().unwrap(),
            cluster.store_redis().pid().unwrap(),
            cluster.presence_redis().pid().unwrap(),
        ];
        let dir = cluster.dir().to_owned();
        drop(cluster);
        let me = std::process::id().to_string();
        for pid in pids {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            assert!(
                !status.lines().any(|l| l.starts_with("PPid:") && l.ends_with(&me)),
                "child {pid} still ours"
            );
        }
        assert!(!dir.exists());
    }

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let options = ClusterOptions { gateways: 1, workers: 1, ..ClusterOptions::default() };
        let err = Cluster::start(Path::new("/nonexistent/tern"), options).unwrap_err();
        assert!(matches!(err, ClusterError::Process(ProcessError::Spawn { .. })), "{err}");
    }
}
