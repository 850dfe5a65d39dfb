//! [`RedisServer`]: a throwaway `redis-server` child process on a free loopback port, in its own
//! temporary directory, that tests can restart (SIGTERM), kill -9, start again and flush.
//!
//! The server is configured entirely on its command line (no config file):
//! `--port N --bind 127.0.0.1 --dir <tmp> --save "" --appendonly yes|no --appendfsync <policy>
//! --daemonize no --protected-mode no --logfile <tmp>/redis.log`. RDB snapshots are off, so
//! whatever survives a restart survived through the AOF. The port is picked by binding
//! a free port below the kernel's ephemeral range (`ports`) and releasing it; if another process takes it before redis-server binds it,
//! the start is retried on a new port. Restarts reuse the same port and directory, so clients
//! keep their URL and the AOF is replayed.
//!
//! Dropping a [`RedisServer`] kills the child (SIGKILL) and removes the directory. A test
//! process killed from outside cannot run `Drop`, so its redis-server outlives it; those are
//! in temporary directories named `tern-redis-*` and bound to loopback only.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use thiserror::Error;

use crate::resp::{self, Reply};

mod security;
pub use security::{RedisSecurity, RedisTls};

/// How often a bounded wait looks again (readiness, exit after SIGTERM).
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How many fresh ports a first start tries when the picked one was taken meanwhile.
const PORT_ATTEMPTS: usize = 8;
/// Name of the server's log file inside its directory.
pub const LOG_FILE_NAME: &str = "redis.log";
/// Environment variable naming the redis-server binary (default `redis-server` on `PATH`).
pub const BINARY_ENV: &str = "TERN_REDIS_SERVER";

/// The AOF fsync policy (`appendfsync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AppendFsync {
    /// fsync before every reply: an acknowledged write survives kill -9 and power loss.
    #[default]
    Always,
    /// fsync once a second: up to a second of acknowledged writes can be lost.
    EverySec,
    /// Leave it to the OS.
    No,
}

impl AppendFsync {
    /// The value redis-server's `appendfsync` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            AppendFsync::Always => "always",
            AppendFsync::EverySec => "everysec",
            AppendFsync::No => "no",
        }
    }
}

/// How to start a [`RedisServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// `appendonly yes|no`. Default yes: writes survive restarts through the AOF.
    pub appendonly: bool,
    /// `appendfsync`. Default [`AppendFsync::Always`].
    pub appendfsync: AppendFsync,
    /// The redis-server binary. Default: `$TERN_REDIS_SERVER`, else `redis-server` on `PATH`.
    pub binary: PathBuf,
    /// How long a start waits for the server to answer PING (it may be replaying its AOF).
    /// Default 20 s.
    pub ready_timeout: Duration,
    /// How long a stop waits for the server to exit after SIGTERM before it kills it.
    /// Default 20 s.
    pub stop_timeout: Duration,
    /// `--replicaof 127.0.0.1 PORT`: start as a replica of the server at this address (see
    /// [`crate::replica`]). Default `None`: a primary.
    pub replica_of: Option<SocketAddr>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            appendonly: true,
            appendfsync: AppendFsync::Always,
            binary: std::env::var_os(BINARY_ENV)
                .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from),
            ready_timeout: Duration::from_secs(20),
            stop_timeout: Duration::from_secs(20),
            replica_of: None,
        }
    }
}

impl RedisOptions {
    /// The defaults with AOF off (`appendonly no`): nothing survives a restart.
    pub fn without_aof() -> Self {
        Self { appendonly: false, ..Self::default() }
    }
}

/// What went wrong while running a test redis-server.
#[derive(Debug, Error)]
pub enum TestkitError {
    /// The redis-server binary could not be started at all.
    #[error(
        "cannot run {binary:?} ({source}); install redis-server (Debian: apt-get install \
         redis-server) or set {BINARY_ENV}"
    )]
    NotInstalled { binary: PathBuf, source: io::Error },
    /// A local I/O step failed (temporary directory, socket, signal).
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    /// The server process exited while we waited for it.
    #[error("redis-server on port {port} exited ({status}); log tail:\n{log_tail}")]
    Exited { port: u16, status: ExitStatus, log_tail: String },
    /// The server did not answer PING with +PONG in time.
    #[error(
        "redis-server on port {port} not ready after {waited:?} (last answer: {last}); \
         log tail:\n{log_tail}"
    )]
    NotReady { port: u16, waited: Duration, last: String, log_tail: String },
    /// Every picked port was taken before redis-server could bind it.
    #[error("no free loopback port after {attempts} attempts")]
    NoFreePort { attempts: usize },
    /// The operation needs a running server and there is none (after stop or kill9).
    #[error("redis-server on port {port} is not running")]
    NotRunning { port: u16 },
    /// The operation needs a stopped server and it is running.
    #[error("redis-server on port {port} is already running")]
    AlreadyRunning { port: u16 },
    /// A command got an answer it should not have.
    #[error("{command} answered {reply:?}")]
    UnexpectedReply { command: String, reply: Reply },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> TestkitError {
    let what = what.into();
    move |source| TestkitError::Io { what, source }
}

/// A running (or deliberately stopped) redis-server owned by a test. See the module doc.
#[derive(Debug)]
pub struct RedisServer {
    pub(crate) options: RedisOptions,
    /// Access control and TLS ([`RedisServer::start_secured`]); default: none.
    security: RedisSecurity,
    port: u16,
    pub(crate) child: Option<Child>,
    // Last field: dropped after `Drop::drop` has killed the child.
    dir: TempDir,
}

/// The outcome of one attempt to bring a server up.
enum StartFailure {
    /// The port was taken (the server exited saying so): try another.
    AddressInUse,
    Other(TestkitError),
}

impl RedisServer {
    /// Starts a server with the default options (AOF on, `appendfsync always`).
    pub fn start() -> Result<Self, TestkitError> {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a server with `options` on a free loopback port, in a new temporary directory,
    /// and waits until it answers PING.
    pub fn start_with(options: RedisOptions) -> Result<Self, TestkitError> {
        Self::start_secured(options, RedisSecurity::default())
    }

    /// [`start_with`](Self::start_with), with a password, ACL users and/or TLS. Readiness is
    /// then the server's "Ready to accept connections" log line (PING needs AUTH or TLS).
    pub fn start_secured(
        options: RedisOptions,
        security: RedisSecurity,
    ) -> Result<Self, TestkitError> {
        let dir = tempfile::Builder::new()
            .prefix("tern-redis-")
            .tempdir()
            .map_err(io_error("create temporary directory"))?;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            match launch(&options, &security, dir.path(), port) {
                Ok(child) => {
                    return Ok(Self { options, security, port, child: Some(child), dir });
                }
                Err(StartFailure::AddressInUse) => continue,
                Err(StartFailure::Other(e)) => return Err(e),
            }
        }
        Err(TestkitError::NoFreePort { attempts: PORT_ATTEMPTS })
    }

    /// `redis://127.0.0.1:PORT/` (`rediss://` for a TLS server), without credentials.
    pub fn url(&self) -> String {
        let scheme = if self.security.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// [`url`](Self::url) with `user:password@` (user "" = the default user, `requirepass`).
    pub fn url_with_auth(&self, user: &str, password: &str) -> String {
        self.url().replacen("://", &format!("://{user}:{password}@"), 1)
    }

    /// The loopback port, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server's working directory (AOF directory and log file live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The options it was started with.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// The child's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the child process is still alive (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) | Some(Err(_)) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Stops the server gracefully: SIGTERM, then waits for it to exit (Redis flushes and
    /// fsyncs its AOF on SIGTERM). Kills it with SIGKILL if it has not exited within
    /// `stop_timeout`, and reports that as an error.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        let port = self.port;
        let Some(mut child) = self.child.take() else {
            return Err(TestkitError::NotRunning { port });
        };
        let pid = child.id().to_string();
        let signalled = Command::new("kill")
            .args(["-TERM", &pid])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(io_error("run kill -TERM"));
        let deadline = Instant::now() + self.options.stop_timeout;
        if signalled.is_ok() {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => return Ok(()),
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                    Ok(None) => break,
                    Err(e) => return Err(io_error("wait for redis-server")(e)),
                }
            }
        }
        // Not stopped gracefully: make sure it is gone, then report.
        let _ = child.kill();
        let _ = child.wait();
        signalled?;
        Err(TestkitError::NotReady {
            port,
            waited: self.options.stop_timeout,
            last: "still running after SIGTERM; killed".to_owned(),
            log_tail: log_tail(self.dir.path(), 0),
        })
    }

    /// Stops the server with SIGTERM and starts it again on the same port and directory;
    /// returns once it answers PING again (its AOF replayed).
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        self.start_again()
    }

    /// Kills the server with SIGKILL (no chance to flush anything) and reaps it.
    pub fn kill9(&mut self) -> Result<(), TestkitError> {
        let port = self.port;
        let Some(mut child) = self.child.take() else {
            return Err(TestkitError::NotRunning { port });
        };
        child.kill().map_err(io_error("kill -9 redis-server"))?;
        child.wait().map_err(io_error("wait for redis-server"))?;
        Ok(())
    }

    /// Starts the server again after [`stop`](Self::stop) or [`kill9`](Self::kill9), on the
    /// same port and directory, and waits until it answers PING.
    pub fn start_again(&mut self) -> Result<(), TestkitError> {
        if self.is_running() {
            return Err(TestkitError::AlreadyRunning { port: self.port });
        }
        match launch(&self.options, &self.security, self.dir.path(), self.port) {
            Ok(child) => {
                self.child = Some(child);
                Ok(())
            }
            Err(StartFailure::AddressInUse) => Err(TestkitError::Io {
                what: format!("restart redis-server on port {}", self.port),
                source: io::Error::from(io::ErrorKind::AddrInUse),
            }),
            Err(StartFailure::Other(e)) => Err(e),
        }
    }

    /// Sends one command (as a RESP array of bulk strings) and returns the reply.
    pub fn command(&self, args: &[&[u8]]) -> Result<Reply, TestkitError> {
        if self.child.is_none() {
            return Err(TestkitError::NotRunning { port: self.port });
        }
        let name = args.first().map(|a| String::from_utf8_lossy(a).into_owned());
        resp::command(self.addr(), args, self.options.ready_timeout).map_err(io_error(format!(
            "send {} to port {}",
            name.unwrap_or_default(),
            self.port
        )))
    }

    /// Deletes every key of every database (`FLUSHALL`).
    pub fn flushall(&self) -> Result<(), TestkitError> {
        match self.command(&[b"FLUSHALL"])? {
            Reply::Simple(s) if s == "OK" => Ok(()),
            reply => Err(TestkitError::UnexpectedReply { command: "FLUSHALL".into(), reply }),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port that was free a moment ago (bound to port 0, then released).
fn free_port() -> Result<u16, TestkitError> {
    // Below the ephemeral range, so that a restart on the same port cannot lose it to an
    // outgoing connection (see `ports`).
    crate::ports::reserve_port().map_err(io_error("reserve a free port"))
}

/// Spawns redis-server on `port` in `dir` and waits until it answers +PONG (or, when
/// secured, logs that it is ready).
fn launch(
    options: &RedisOptions,
    security: &RedisSecurity,
    dir: &Path,
    port: u16,
) -> Result<Child, StartFailure> {
    let log = dir.join(LOG_FILE_NAME);
    let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
    let mut child = Command::new(&options.binary)
        .current_dir(dir)
        .args(security.args(port))
        .args(["--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--save", ""])
        .args(["--appendonly", if options.appendonly { "yes" } else { "no" }])
        .args(["--appendfsync", options.appendfsync.as_str()])
        .args(["--daemonize", "no", "--protected-mode", "no"])
        // A replica's first sync starts at once (the default waits 5 s for more replicas).
        .args(["--repl-diskless-sync-delay", "0"])
        .arg("--logfile")
        .arg(&log)
        .args(
            options
                .replica_of
                .iter()
                .flat_map(|a| ["--replicaof".to_owned(), a.ip().to_string(), a.port().to_string()]),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| {
            StartFailure::Other(TestkitError::NotInstalled {
                binary: options.binary.clone(),
                source,
            })
        })?;
    let secured = *security != RedisSecurity::default();
    match wait_ready(&mut child, options.ready_timeout, dir, log_start, port, secured) {
        Ok(()) => Ok(child),
        Err(failure) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(failure)
        }
    }
}

fn wait_ready(
    child: &mut Child,
    timeout: Duration,
    dir: &Path,
    log_start: u64,
    port: u16,
    secured: bool,
) -> Result<(), StartFailure> {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let log_tail = log_tail(dir, log_start);
                if log_tail.contains("Address already in use") {
                    return Err(StartFailure::AddressInUse);
                }
                return Err(StartFailure::Other(TestkitError::Exited { port, status, log_tail }));
            }
            Ok(None) => {}
            Err(e) => return Err(StartFailure::Other(io_error("wait for redis-server")(e))),
        }
        let last = match resp::ping(addr, Duration::from_secs(1)) {
            _ if secured && log_since(dir, log_start).contains("Ready to accept connections") => {
                return Ok(());
            }
            _ if secured => "not ready (log)".to_owned(),
            Ok(line) if line == "+PONG" => return Ok(()),
            Ok(line) => line,
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= timeout {
            return Err(StartFailure::Other(TestkitError::NotReady {
                port,
                waited: timeout,
                last,
                log_tail: log_tail(dir, log_start),
            }));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Everything the log got since byte `from` ("" when unreadable).
fn log_since(dir: &Path, from: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(dir.join(LOG_FILE_NAME))?;
        file.seek(SeekFrom::Start(from))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        Ok(text)
    };
    read().unwrap_or_default()
}

/// The last few KiB of the log written since byte `from` (for error messages).
fn log_tail(dir: &Path, from: u64) -> String {
    const TAIL: u64 = 4096;
    let read = || -> io::Result<String> {
        let mut file = File::open(dir.join(LOG_FILE_NAME))?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(from.max(len.saturating_sub(TAIL))))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|e| format!("(no log: {e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(reply: Reply) -> Option<Vec<u8>> {
        match reply {
            Reply::Bulk(b) => b,
            other => panic!("expected a bulk string, got {other:?}"),
        }
    }

    fn set(server: &RedisServer, key: &str, value: &str) {
        let reply = server.command(&[b"SET", key.as_bytes(), value.as_bytes()]).unwrap();
        assert_eq!(reply, Reply::Simple("OK".into()));
    }

    fn get(server: &RedisServer, key: &str) -> Option<String> {
        bulk(server.command(&[b"GET", key.as_bytes()]).unwrap())
            .map(|b| String::from_utf8(b).unwrap())
    }

    fn config_get(server: &RedisServer, name: &str) -> String {
        match server.command(&[b"CONFIG", b"GET", name.as_bytes()]).unwrap() {
            Reply::Array(Some(items)) => {
                assert_eq!(items.len(), 2, "{items:?}");
                String::from_utf8(bulk(items[1].clone()).unwrap()).unwrap()
            }
            other => panic!("CONFIG GET {name}: {other:?}"),
        }
    }

    #[test]
    fn starts_on_a_free_port_and_answers_ping() {
        let a = RedisServer::start().unwrap();
        let b = RedisServer::start().unwrap();
        assert_ne!(a.port(), b.port());
        assert_ne!(a.port(), 6379);
        assert_eq!(a.url(), format!("redis://127.0.0.1:{}/", a.port()));
        assert_eq!(resp::ping(a.addr(), Duration::from_secs(5)).unwrap(), "+PONG");
        assert_eq!(a.command(&[b"PING"]).unwrap(), Reply::Simple("PONG".into()));
        // The two servers are separate.
        set(&a, "k", "in a");
        assert_eq!(get(&b, "k"), None);
    }

    #[test]
    fn options_reach_the_server() {
        let durable = RedisServer::start().unwrap();
        assert_eq!(config_get(&durable, "appendonly"), "yes");
        assert_eq!(config_get(&durable, "appendfsync"), "always");
        assert_eq!(config_get(&durable, "save"), "");
        assert_eq!(
            config_get(&durable, "dir"),
            durable.dir().canonicalize().unwrap().to_str().unwrap()
        );
        let volatile = RedisServer::start_with(RedisOptions {
            appendfsync: AppendFsync::EverySec,
            ..RedisOptions::without_aof()
        })
        .unwrap();
        assert_eq!(config_get(&volatile, "appendonly"), "no");
        assert_eq!(config_get(&volatile, "appendfsync"), "everysec");
    }

    #[test]
    fn restart_keeps_aof_data_on_the_same_port() {
        let mut server = RedisServer::start().unwrap();
        let port = server.port();
        let pid = server.pid().unwrap();
        set(&server, "greeting", "hello");
        server.restart().unwrap();
        assert_eq!(server.port(), port);
        assert_ne!(server.pid().unwrap(), pid, "a new process");
        assert_eq!(get(&server, "greeting").as_deref(), Some("hello"));
    }

    #[test]
    fn without_aof_a_restart_loses_everything() {
        let mut server = RedisServer::start_with(RedisOptions::without_aof()).unwrap();
        set(&server, "greeting", "hello");
        server.restart().unwrap();
        assert_eq!(get(&server, "greeting"), None);
    }

    #[test]
    fn kill9_keeps_every_acknowledged_write_with_appendfsync_always() {
        let mut server = RedisServer::start().unwrap();
        for i in 0..200 {
            set(&server, &format!("k{i}"), &format!("v{i}"));
        }
        server.kill9().unwrap();
        assert!(!server.is_running());
        assert!(resp::ping(server.addr(), Duration::from_secs(1)).is_err(), "port closed");
        assert!(matches!(server.command(&[b"PING"]), Err(TestkitError::NotRunning { .. })));
        server.start_again().unwrap();
        for i in 0..200 {
            assert_eq!(get(&server, &format!("k{i}")), Some(format!("v{i}")), "k{i}");
        }
    }

    #[test]
    fn start_again_refuses_a_running_server() {
        let mut server = RedisServer::start().unwrap();
        assert!(matches!(server.start_again(), Err(TestkitError::AlreadyRunning { .. })));
        server.stop().unwrap();
        assert!(matches!(server.stop(), Err(TestkitError::NotRunning { .. })));
        server.start_again().unwrap();
        assert!(server.is_running());
    }

    #[test]
    fn flushall_removes_every_key() {
        let server = RedisServer::start().unwrap();
        set(&server, "a", "1");
        set(&server, "b", "2");
        server.flushall().unwrap();
        assert_eq!(get(&server, "a"), None);
        assert_eq!(server.command(&[b"DBSIZE"]).unwrap(), Reply::Integer(0));
    }

    #[test]
    fn drop_kills_the_process() {
        let server = RedisServer::start().unwrap();
        let addr = server.addr();
        let pid = server.pid().unwrap();
        let dir = server.dir().to_owned();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(server);
        let err = resp::ping(addr, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        assert!(!dir.exists(), "temporary directory removed");
    }

    #[test]
    fn a_missing_binary_is_a_clear_error() {
        let options = RedisOptions {
            binary: PathBuf::from("/nonexistent/redis-server"),
            ..RedisOptions::default()
        };
        let err = RedisServer::start_with(options).unwrap_err();
        assert!(matches!(err, TestkitError::NotInstalled { .. }), "{err}");
        assert!(err.to_string().contains("apt-get install redis-server"), "{err}");
    }
}
