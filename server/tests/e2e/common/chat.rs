//! `tern chat` and `tern serve` as child processes for the newcomer tests: a chat whose stdin
//! the test writes and whose stdout lines the test waits for, and a server on a port that
//! survives restarts.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Instant;

use tern_testkit::{ProcessOptions, TernProcess};

use super::WAIT;

/// The `tern` binary under test.
pub fn tern_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tern")
}

/// `tern serve` in `data_dir` on a reserved client port (outside the ephemeral range, so that
/// a restart gets it back) and a free HTTP port.
pub fn serve(data_dir: &Path, extra: &[&str]) -> TernProcess {
    let port = tern_testkit::cluster::reserve_port().unwrap();
    let mut args: Vec<OsString> =
        ["serve", "--listen", &format!("127.0.0.1:{port}")].iter().map(OsString::from).collect();
    args.extend(["--http-listen", "127.0.0.1:0", "--data-dir"].map(OsString::from));
    args.push(data_dir.into());
    args.extend(extra.iter().map(OsString::from));
    let options = ProcessOptions {
        env: vec![("TERN_SERVER_LOG".into(), "warn".into())],
        ..ProcessOptions::default()
    };
    TernProcess::spawn_with(tern_bin(), args, options).unwrap_or_else(|e| panic!("{e}"))
}

/// A `tern chat` child: stdin to type into, stdout lines as they come.
pub struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
}

impl Chat {
    /// Runs `tern chat ARGS` in `cwd` (stderr inherited: it holds the logs).
    pub fn start(cwd: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(tern_bin())
            .arg("chat")
            .args(args)
            .current_dir(cwd)
            .env("TERN_SERVER_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tern chat");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Self { child, stdin, lines, seen: Vec::new() }
    }

    /// Waits (bounded by [`WAIT`]) for the next stdout line containing `needle`; returns it.
    pub fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no chat line with {needle:?} in time; saw:\n{}", self.seen.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("chat exited without {needle:?}; saw:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// Types one line.
    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Types `/quit` and waits (bounded) for the exit, collecting what is left on stdout.
    pub fn quit(mut self) -> ExitStatus {
        self.type_line("/quit");
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "chat did not exit after /quit");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
