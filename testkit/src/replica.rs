//! Replication controls for [`RedisServer`]: start a server as a replica of another, read its
//! `INFO` fields, wait until it has caught up, freeze and thaw its process, and promote it
//! (`REPLICAOF NO ONE`) as Sentinel would. Used by the Redis store's failover tests.
//!
//! A replica is an ordinary [`RedisServer`] started with [`RedisOptions::replica_of`] set, so
//! it has its own port, directory, AOF and log, and every other control (kill -9, restart)
//! works on it too. Waits here are bounded by the server's `ready_timeout` and poll `INFO`
//! (an event, the replication offset, not a fixed delay).
//!
//! Making a replica lag on purpose: [`freeze`](RedisServer::freeze) (SIGSTOP) stops it from
//! applying anything, but what the primary already sent still waits in the replica's kernel
//! socket buffer and is applied after [`thaw`](RedisServer::thaw). For a lag that really loses
//! the tail, put a [`ChaosProxy`](crate::ChaosProxy) between replica and primary, pause it, and
//! reset its connections after the primary died.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::redis_server::{POLL_INTERVAL, RedisOptions, RedisServer, TestkitError};
use crate::resp::Reply;

impl RedisServer {
    /// Starts a replica of the server at `primary` (`--replicaof`) with `options`, and waits
    /// until its link is up and the initial sync is done.
    pub fn start_replica(primary: SocketAddr, options: RedisOptions) -> Result<Self, TestkitError> {
        let server = Self::start_with(RedisOptions { replica_of: Some(primary), ..options })?;
        server.wait_info("replication", "link up and synced", |info| {
            field(info, "master_link_status") == Some("up")
                && field(info, "master_sync_in_progress") == Some("0")
        })?;
        // With AOF on, a replica rewrites its AOF after the sync and refuses to shut down
        // until that is done ("Writing initial AOF, can't exit"): wait for it here.
        server.wait_info("persistence", "initial AOF written", |info| {
            field(info, "aof_rewrite_in_progress") == Some("0")
                && field(info, "aof_rewrite_scheduled") == Some("0")
        })?;
        Ok(server)
    }

    /// `INFO <section>` as text.
    pub fn info(&self, section: &str) -> Result<String, TestkitError> {
        match self.command(&[b"INFO", section.as_bytes()])? {
            Reply::Bulk(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            reply => {
                Err(TestkitError::UnexpectedReply { command: format!("INFO {section}"), reply })
            }
        }
    }

    /// One field of `INFO <section>` (`None` when absent).
    pub fn info_field(&self, section: &str, name: &str) -> Result<Option<String>, TestkitError> {
        Ok(field(&self.info(section)?, name).map(str::to_owned))
    }

    /// `master_repl_offset`: on a primary, the bytes of replication stream it produced; on a
    /// replica, the bytes it has applied.
    pub fn repl_offset(&self) -> Result<u64, TestkitError> {
        let info = self.info("replication")?;
        field(&info, "master_repl_offset").and_then(|v| v.parse().ok()).ok_or_else(|| {
            TestkitError::UnexpectedReply {
                command: "INFO replication (master_repl_offset)".into(),
                reply: Reply::Bulk(Some(info.into_bytes())),
            }
        })
    }

    /// Waits until this replica has applied everything `primary` had produced when called.
    pub fn wait_caught_up(&self, primary: &RedisServer) -> Result<(), TestkitError> {
        let target = primary.repl_offset()?;
        self.wait_info("replication", "caught up with the primary", |info| {
            field(info, "master_repl_offset").and_then(|v| v.parse::<u64>().ok()) >= Some(target)
        })
    }

    /// `REPLICAOF NO ONE`: the replica becomes a primary with a new replication id (its old
    /// history becomes `master_replid2`). Waits for `role:master`; later restarts start it as
    /// a primary too.
    pub fn promote(&mut self) -> Result<(), TestkitError> {
        match self.command(&[b"REPLICAOF", b"NO", b"ONE"])? {
            Reply::Simple(s) if s == "OK" => {}
            reply => {
                return Err(TestkitError::UnexpectedReply { command: "REPLICAOF".into(), reply });
            }
        }
        self.options.replica_of = None;
        self.wait_info("replication", "role:master", |info| field(info, "role") == Some("master"))
    }

    /// SIGSTOP: the process stops (it answers nothing and applies nothing) until
    /// [`thaw`](Self::thaw). See the module doc for what it does not hold back.
    pub fn freeze(&self) -> Result<(), TestkitError> {
        self.signal("-STOP")
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub fn thaw(&self) -> Result<(), TestkitError> {
        self.signal("-CONT")
    }

    fn signal(&self, which: &str) -> Result<(), TestkitError> {
        let pid = self.pid().ok_or(TestkitError::NotRunning { port: self.port() })?;
        let status = Command::new("kill")
            .args([which, &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| TestkitError::Io { what: format!("kill {which} {pid}"), source })?;
        if status.success() {
            Ok(())
        } else {
            Err(TestkitError::Io {
                what: format!("kill {which} {pid} exited {status}"),
                source: std::io::Error::other("signal not delivered"),
            })
        }
    }

    /// Polls `INFO <section>` until `done` holds, bounded by `ready_timeout`.
    fn wait_info(
        &self,
        section: &str,
        what: &str,
        done: impl Fn(&str) -> bool,
    ) -> Result<(), TestkitError> {
        let started = Instant::now();
        loop {
            let info = self.info(section)?;
            if done(&info) {
                return Ok(());
            }
            if started.elapsed() >= self.options.ready_timeout {
                return Err(TestkitError::NotReady {
                    port: self.port(),
                    waited: self.options.ready_timeout,
                    last: format!("waiting for {what}; INFO {section}: {info}"),
                    log_tail: String::new(),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

/// The value of `name:` in INFO text.
pub fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')).map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(server: &RedisServer, key: &str, value: &str) {
        let reply = server.command(&[b"SET", key.as_bytes(), value.as_bytes()]).unwrap();
        assert_eq!(reply, Reply::Simple("OK".into()));
    }

    fn get(server: &RedisServer, key: &str) -> Reply {
        server.command(&[b"GET", key.as_bytes()]).unwrap()
    }

    #[test]
    fn a_replica_follows_and_a_promoted_one_takes_writes() {
        let primary = RedisServer::start().unwrap();
        let mut replica =
            RedisServer::start_replica(primary.addr(), RedisOptions::default()).unwrap();
        assert_eq!(replica.info_field("replication", "role").unwrap().as_deref(), Some("slave"));
        set(&primary, "k", "v");
        replica.wait_caught_up(&primary).unwrap();
        assert_eq!(get(&replica, "k"), Reply::Bulk(Some(b"v".to_vec())));
        let old_id = primary.info_field("replication", "master_replid").unwrap();
        // A replica refuses writes until promoted; then it has a new history id and remembers
        // the old one as replid2.
        assert!(
            matches!(replica.command(&[b"SET", b"x", b"1"]).unwrap(), Reply::Error(e) if e.starts_with("READONLY"))
        );
        replica.promote().unwrap();
        assert_eq!(replica.info_field("replication", "master_replid2").unwrap(), old_id);
        assert_ne!(replica.info_field("replication", "master_replid").unwrap(), old_id);
        set(&replica, "x", "1");
        // Restarting the promoted one keeps it a primary.
        replica.restart().unwrap();
        assert_eq!(replica.info_field("replication", "role").unwrap().as_deref(), Some("master"));
        assert_eq!(get(&replica, "x"), Reply::Bulk(Some(b"1".to_vec())));
    }

    #[test]
    fn a_frozen_replica_catches_up_once_thawed() {
        let primary = RedisServer::start().unwrap();
        let replica = RedisServer::start_replica(primary.addr(), RedisOptions::default()).unwrap();
        replica.freeze().unwrap();
        set(&primary, "late", "1");
        replica.thaw().unwrap();
        replica.wait_caught_up(&primary).unwrap();
        assert_eq!(get(&replica, "late"), Reply::Bulk(Some(b"1".to_vec())));
        assert_eq!(field("a:1\r\nab:2\r\n", "ab"), Some("2"));
        assert_eq!(field("a:1\r\n", "b"), None);
    }
}
