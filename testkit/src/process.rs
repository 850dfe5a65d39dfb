//! [`TernProcess`]: one `tern` subcommand (`dispatch`, `gateway`, `serve`) run as a child
//! process, with its announced addresses, its log tail, and kill -9, SIGTERM and restart.
//!
//! # The announcement line
//!
//! Every long-running `tern` subcommand prints one line on stdout before anything else, e.g.
//! `tern gateway listening client=127.0.0.1:41234 http=127.0.0.1:41235 id=G1`. The words of
//! the form `key=value` are parsed into an [`Announcement`]; `http=off` means no HTTP endpoint.
//!
//! # Logs
//!
//! Two background threads per run drain the child's stdout and stderr, line by line, into one
//! ring buffer bounded in bytes ([`ProcessOptions::log_bytes`]); the oldest lines go first. So
//! the child never blocks on a full pipe however much it logs, and [`TernProcess::logs`] gives
//! the tail (of this run and the runs before it) for panic messages. Set the environment
//! variable `TERN_TESTKIT_ECHO=1` to also copy every line to the test's stderr as it comes.
//!
//! # Restart on the same addresses
//!
//! [`TernProcess::restart`] and [`TernProcess::start_again`] run the same binary with the same
//! arguments, except that the values of `--listen`, `--link-listen` and `--http-listen` are
//! replaced by the addresses the previous run announced (`client=`, `link=`, `http=`): a
//! process started on port 0 comes back on the port it had, so peers configured with its
//! address (gateways with a static worker list, clients reconnecting) find it again. If that
//! port is briefly taken (the child exits saying "Address already in use"), the start is
//! retried until [`ProcessOptions::ready_timeout`].
//!
//! Dropping a [`TernProcess`] kills the child with SIGKILL and reaps it. Signals are sent
//! without `libc`: SIGKILL through [`std::process::Child::kill`], SIGTERM by running
//! `kill -TERM <pid>`.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Environment variable: when set to `1`, child output is also copied to the test's stderr.
pub const ECHO_ENV: &str = "TERN_TESTKIT_ECHO";
/// Longest line kept whole; longer lines are cut into pieces of this size.
const MAX_LINE_BYTES: usize = 16 * 1024;
/// How often a bounded wait looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Pause between two start attempts when the address was taken.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// The flags whose values a restart replaces, and the announcement key holding the address.
const ADDRESS_FLAGS: [(&str, &str); 3] =
    [("--listen", "client"), ("--link-listen", "link"), ("--http-listen", "http")];

/// How to run a [`TernProcess`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOptions {
    /// How long a start waits for the announcement line. Default 30 s.
    pub ready_timeout: Duration,
    /// How long [`TernProcess::terminate`] waits for the exit after SIGTERM. Default 15 s.
    pub stop_timeout: Duration,
    /// Bytes of log lines kept (stdout and stderr together). Default 256 KiB.
    pub log_bytes: usize,
    /// Extra environment variables for the child.
    pub env: Vec<(OsString, OsString)>,
    /// A short name for messages; default: the subcommand and the value of `--id`.
    pub label: Option<String>,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        Self {
            ready_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(15),
            log_bytes: 256 * 1024,
            env: Vec::new(),
            label: None,
        }
    }
}

/// What went wrong while running a tern child process.
#[derive(Debug, Error)]
pub enum ProcessError {
    /// The binary could not be started at all.
    #[error("cannot run {binary:?}: {source}")]
    Spawn { binary: PathBuf, source: io::Error },
    /// The child exited before it printed its announcement line.
    #[error("{label} exited ({status}) before announcing itself; log tail:\n{logs}")]
    Exited { label: String, status: ExitStatus, logs: String },
    /// No announcement line in time (the child was killed).
    #[error("{label} did not announce itself within {waited:?}; log tail:\n{logs}")]
    NotReady { label: String, waited: Duration, logs: String },
    /// The child did not exit in time after SIGTERM (it was killed).
    #[error("{label} still running {waited:?} after SIGTERM; killed. log tail:\n{logs}")]
    StopTimeout { label: String, waited: Duration, logs: String },
    /// The operation needs a running child and there is none.
    #[error("{label} is not running")]
    NotRunning { label: String },
    /// The operation needs a stopped child and it runs.
    #[error("{label} is already running")]
    AlreadyRunning { label: String },
    /// A local I/O step failed (pipes, threads, signals, waiting).
    #[error("{label}: {what}: {source}")]
    Io { label: String, what: &'static str, source: io::Error },
}

/// The `key=value` words of a child's first stdout line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announcement {
    line: String,
    fields: BTreeMap<String, String>,
}

impl Announcement {
    /// Parses a line: every whitespace-separated word with a `=` is a field.
    pub fn parse(line: &str) -> Self {
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        let fields = line
            .split_whitespace()
            .filter_map(|word| word.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self { line, fields }
    }

    /// The whole line, without its line end.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// A field's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A field's value as a socket address (`None` if absent, `off` or not an address).
    pub fn addr(&self, key: &str) -> Option<SocketAddr> {
        self.get(key)?.parse().ok()
    }

    /// Every field, sorted by key.
    pub fn fields(&self) -> &BTreeMap<String, String> {
        &self.fields
    }
}

/// The log ring: the newest lines, bounded in bytes.
#[derive(Debug)]
struct LogRing {
    lines: VecDeque<String>,
    bytes: usize,
    capacity: usize,
    /// Lines pushed in all, so a reader can ask for the lines since a point.
    pushed: u64,
    echo: bool,
}

impl LogRing {
    fn new(capacity: usize) -> Self {
        let echo = std::env::var_os(ECHO_ENV).is_some_and(|v| v == "1");
        Self { lines: VecDeque::new(), bytes: 0, capacity: capacity.max(1), pushed: 0, echo }
    }

    fn push(&mut self, line: String) {
        if self.echo {
            eprintln!("{line}");
        }
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        self.pushed += 1;
        while self.bytes > self.capacity && self.lines.len() > 1 {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len() + 1;
            }
        }
    }

    /// The kept lines pushed after the first `since`, joined.
    fn since(&self, since: u64) -> String {
        let first_kept = self.pushed - self.lines.len() as u64;
        let skip = since.saturating_sub(first_kept) as usize;
        let mut out = String::new();
        for line in self.lines.iter().skip(skip) {
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

type SharedRing = Arc<Mutex<LogRing>>;

fn lock(ring: &SharedRing) -> std::sync::MutexGuard<'_, LogRing> {
    ring.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One run of the child.
#[derive(Debug)]
struct Run {
    child: Child,
    readers: Vec<JoinHandle<()>>,
}

impl Run {
    /// Kills (if still alive) and reaps the child, then joins the reader threads, which end
    /// at the pipes' EOF.
    fn kill_and_reap(mut self) -> io::Result<ExitStatus> {
        let _ = self.child.kill();
        let status = self.child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        status
    }
}

/// A `tern` child process owned by a test. See the module doc.
#[derive(Debug)]
pub struct TernProcess {
    binary: PathBuf,
    args: Vec<OsString>,
    options: ProcessOptions,
    label: String,
    announcement: Announcement,
    logs: SharedRing,
    run: Option<Run>,
}

impl TernProcess {
    /// Runs `binary` with `args` (e.g. `["gateway", "--id", "G1", ...]`) and the default
    /// options, and waits for its announcement line.
    pub fn spawn<I, S>(binary: impl Into<PathBuf>, args: I) -> Result<Self, ProcessError>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self::spawn_with(binary, args, ProcessOptions::default())
    }

    /// [`spawn`](Self::spawn) with options.
    pub fn spawn_with<I, S>(
        binary: impl Into<PathBuf>,
        args: I,
        options: ProcessOptions,
    ) -> Result<Self, ProcessError>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let label = options.label.clone().unwrap_or_else(|| default_label(&args));
        let logs = Arc::new(Mutex::new(LogRing::new(options.log_bytes)));
        let mut process = Self {
            binary: binary.into(),
            args,
            options,
            label,
            announcement: Announcement::default(),
            logs,
            run: None,
        };
        process.launch()?;
        Ok(process)
    }

    /// The name used in messages and log lines, e.g. `gateway G1`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The arguments the next start uses (after a first run: with the bound addresses).
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// The binary this runs.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The announcement line of the current (or last) run.
    pub fn announcement(&self) -> &Announcement {
        &self.announcement
    }

    /// An announced address (`client`, `link`, `http`, ...).
    pub fn addr(&self, key: &str) -> Option<SocketAddr> {
        self.announcement.addr(key)
    }

    /// The announced `client=` address (gateways, `tern serve`).
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.addr("client")
    }

    /// The announced `link=` address (dispatch workers).
    pub fn link_addr(&self) -> Option<SocketAddr> {
        self.addr("link")
    }

    /// The announced `http=` address (`None` when `http=off`).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.addr("http")
    }

    /// The announced `id=`.
    pub fn id(&self) -> Option<&str> {
        self.announcement.get("id")
    }

    /// The child's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.run.as_ref().map(|run| run.child.id())
    }

    /// Whether the child is alive. A child that exited by itself is reaped here, and its exit
    /// is noted in the logs.
    pub fn is_running(&mut self) -> bool {
        let Some(run) = self.run.as_mut() else { return false };
        match run.child.try_wait() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => {
                if let Some(run) = self.run.take() {
                    let status = run.kill_and_reap();
                    self.note(&format!("exited by itself ({})", describe(&status)));
                }
                false
            }
        }
    }

    /// The log tail: the last [`ProcessOptions::log_bytes`] of stdout and stderr of every run,
    /// with a marker line at each start and stop.
    pub fn logs(&self) -> String {
        lock(&self.logs).since(0)
    }

    /// Kills the child with SIGKILL (no chance to flush anything) and reaps it.
    pub fn kill9(&mut self) -> Result<(), ProcessError> {
        let run = self.take_run()?;
        let status = run.kill_and_reap();
        self.note(&format!("killed with SIGKILL ({})", describe(&status)));
        status.map(drop).map_err(self.io("wait for the child"))
    }

    /// Sends SIGTERM and waits up to [`ProcessOptions::stop_timeout`] for the child to exit;
    /// past it, kills it with SIGKILL and reports [`ProcessError::StopTimeout`].
    pub fn terminate(&mut self) -> Result<ExitStatus, ProcessError> {
        let mut run = self.take_run()?;
        let pid = run.child.id().to_string();
        let signalled = Command::new("kill")
            .args(["-TERM", &pid])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + self.options.stop_timeout;
        let exited = match signalled {
            Ok(_) => loop {
                match run.child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                    Ok(None) | Err(_) => break None,
                }
            },
            Err(_) => None,
        };
        let status = run.kill_and_reap();
        match (exited, signalled) {
            (Some(status), _) => {
                self.note(&format!("stopped by SIGTERM ({status})"));
                Ok(status)
            }
            (None, Err(source)) => {
                self.note("killed with SIGKILL: kill -TERM failed");
                Err(ProcessError::Io { label: self.label.clone(), what: "run kill -TERM", source })
            }
            (None, Ok(_)) => {
                self.note(&format!("killed with SIGKILL after SIGTERM ({})", describe(&status)));
                Err(ProcessError::StopTimeout {
                    label: self.label.clone(),
                    waited: self.options.stop_timeout,
                    logs: self.logs(),
                })
            }
        }
    }

    /// Stops the child gracefully if it runs ([`terminate`](Self::terminate)), then starts it
    /// again with the same arguments on the same addresses and waits for its announcement.
    pub fn restart(&mut self) -> Result<(), ProcessError> {
        if self.is_running() {
            self.terminate()?;
        }
        self.launch()
    }

    /// Starts the child again after [`kill9`](Self::kill9) or [`terminate`](Self::terminate)
    /// (or after it exited), on the same addresses.
    pub fn start_again(&mut self) -> Result<(), ProcessError> {
        if self.is_running() {
            return Err(ProcessError::AlreadyRunning { label: self.label.clone() });
        }
        self.launch()
    }

    fn take_run(&mut self) -> Result<Run, ProcessError> {
        // Reaps a child that exited by itself, so that it reports "not running".
        if !self.is_running() {
            return Err(ProcessError::NotRunning { label: self.label.clone() });
        }
        self.run.take().ok_or_else(|| ProcessError::NotRunning { label: self.label.clone() })
    }

    fn io(&self, what: &'static str) -> impl FnOnce(io::Error) -> ProcessError + use<> {
        let label = self.label.clone();
        move |source| ProcessError::Io { label, what, source }
    }

    /// Writes a marker line into the log ring.
    fn note(&self, what: &str) {
        lock(&self.logs).push(format!("[testkit] {}: {what}", self.label));
    }

    /// Starts a run and waits for its announcement, retrying while the address is taken.
    fn launch(&mut self) -> Result<(), ProcessError> {
        let deadline = Instant::now() + self.options.ready_timeout;
        loop {
            let since = lock(&self.logs).pushed;
            match self.launch_once(deadline) {
                Err(ProcessError::Exited { .. })
                    if Instant::now() + RETRY_INTERVAL < deadline
                        && lock(&self.logs).since(since).contains("Address already in use") =>
                {
                    self.note("address in use; starting again");
                    std::thread::sleep(RETRY_INTERVAL);
                }
                result => return result,
            }
        }
    }

    fn launch_once(&mut self, deadline: Instant) -> Result<(), ProcessError> {
        let mut command = Command::new(&self.binary);
        command
            .args(&self.args)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|source| ProcessError::Spawn { binary: self.binary.clone(), source })?;
        self.note(&format!("started, pid {}", child.id()));
        let (first_tx, first_rx) = mpsc::channel();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let mut run = Run { child, readers: Vec::new() };
        let readers = self.start_readers(stdout, stderr, first_tx);
        match readers {
            Ok(readers) => run.readers = readers,
            Err(e) => {
                let _ = run.kill_and_reap();
                return Err(e);
            }
        }
        let waited = self.options.ready_timeout;
        match first_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                self.announcement = Announcement::parse(&line);
                self.run = Some(run);
                self.pin_addresses();
                Ok(())
            }
            Err(RecvTimeoutError::Disconnected) => {
                // stdout closed without a line: the child exited (or closed stdout, which
                // counts the same). Reap it and collect everything it said.
                let status = run.kill_and_reap();
                let status = status.map_err(self.io("wait for the child"))?;
                self.note(&format!("exited before announcing itself ({status})"));
                Err(ProcessError::Exited { label: self.label.clone(), status, logs: self.logs() })
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = run.kill_and_reap();
                self.note("killed: no announcement in time");
                Err(ProcessError::NotReady { label: self.label.clone(), waited, logs: self.logs() })
            }
        }
    }

    fn start_readers(
        &self,
        stdout: Option<ChildStdout>,
        stderr: Option<ChildStderr>,
        first_tx: mpsc::Sender<String>,
    ) -> Result<Vec<JoinHandle<()>>, ProcessError> {
        let mut readers = Vec::with_capacity(2);
        if let Some(stdout) = stdout {
            let ring = self.logs.clone();
            let prefix = format!("[{} out] ", self.label);
            let reader = std::thread::Builder::new()
                .name(format!("{}-stdout", self.label))
                .spawn(move || drain(stdout, &ring, &prefix, Some(first_tx)))
                .map_err(self.io("spawn the stdout reader"))?;
            readers.push(reader);
        }
        if let Some(stderr) = stderr {
            let ring = self.logs.clone();
            let prefix = format!("[{} err] ", self.label);
            let reader = std::thread::Builder::new()
                .name(format!("{}-stderr", self.label))
                .spawn(move || drain(stderr, &ring, &prefix, None))
                .map_err(self.io("spawn the stderr reader"))?;
            readers.push(reader);
        }
        Ok(readers)
    }

    /// Rewrites the address flags of the arguments to the addresses this run announced.
    fn pin_addresses(&mut self) {
        for (flag, key) in ADDRESS_FLAGS {
            if let Some(addr) = self.announcement.addr(key) {
                replace_flag_value(&mut self.args, flag, &addr.to_string());
            }
        }
    }
}

impl Drop for TernProcess {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            let _ = run.kill_and_reap();
        }
    }
}

/// Reads lines from a pipe into the ring until EOF; the first one also goes to `first`.
fn drain(
    pipe: impl Read,
    ring: &SharedRing,
    prefix: &str,
    mut first: Option<mpsc::Sender<String>>,
) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(MAX_LINE_BYTES as u64).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if let Some(first) = first.take() {
            let _ = first.send(text.to_owned());
        }
        lock(ring).push(format!("{prefix}{text}"));
    }
}

/// `dispatch W1` from `["dispatch", "--id", "W1", ...]`.
fn default_label(args: &[OsString]) -> String {
    let subcommand = args
        .iter()
        .map(|a| a.to_string_lossy())
        .find(|a| !a.starts_with('-'))
        .map_or_else(|| "tern".to_owned(), |a| a.into_owned());
    match flag_value(args, "--id") {
        Some(id) => format!("{subcommand} {id}"),
        None => subcommand,
    }
}

/// The value of `--flag VALUE` or `--flag=VALUE` (the last one wins, as with clap).
pub fn flag_value(args: &[OsString], flag: &str) -> Option<String> {
    let mut value = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if arg == flag {
            value = iter.next().map(|v| v.to_string_lossy().into_owned());
        } else if let Some(v) = arg.strip_prefix(flag).and_then(|rest| rest.strip_prefix('=')) {
            value = Some(v.to_owned());
        }
    }
    value
}

/// Replaces every value of `--flag VALUE` / `--flag=VALUE` in `args` by `value`.
fn replace_flag_value(args: &mut [OsString], flag: &str, value: &str) {
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].to_string_lossy().into_owned();
        if arg == flag {
            if let Some(next) = args.get_mut(i + 1) {
                *next = OsString::from(value);
            }
            i += 2;
            continue;
        }
        if arg.strip_prefix(flag).is_some_and(|rest| rest.starts_with('=')) {
            args[i] = OsString::from(format!("{flag}={value}"));
        }
        i += 1;
    }
}

fn describe(status: &io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("wait failed: {e}"),
    }
}

/// Whether `args` contain `flag` (as `--flag` or `--flag=...`).
pub fn has_flag(args: &[OsString], flag: &str) -> bool {
    args.iter().map(|a| a.as_os_str()).any(|a: &OsStr| {
        let a = a.to_string_lossy();
        a == flag || a.strip_prefix(flag).is_some_and(|rest| rest.starts_with('='))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `tern`: `sh -c SCRIPT name ARGS...`, so the arguments arrive as `$@`.
    fn sh(script: &str, args: &[&str]) -> Result<TernProcess, ProcessError> {
        sh_with(script, args, ProcessOptions::default())
    }

    fn sh_with(
        script: &str,
        args: &[&str],
        options: ProcessOptions,
    ) -> Result<TernProcess, ProcessError> {
        let options =
            ProcessOptions { label: options.label.or(Some("fake-tern".into())), ..options };
        let mut all = vec!["-c", script, "fake-tern"];
        all.extend_from_slice(args);
        TernProcess::spawn_with("/bin/sh", all, options)
    }

    /// Waits (bounded) until the logs contain `needle`: stdout and stderr are drained by two
    /// threads, so a stderr line may land after the announcement was read.
    fn wait_logs(p: &TernProcess, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !p.logs().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} in:\n{}", p.logs());
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_announcement_fields() {
        let a = Announcement::parse("tern dispatch listening link=127.0.0.1:4000 http=off id=W1\n");
        assert_eq!(a.line(), "tern dispatch listening link=127.0.0.1:4000 http=off id=W1");
        assert_eq!(a.addr("link"), Some("127.0.0.1:4000".parse().unwrap()));
        assert_eq!(a.get("http"), Some("off"));
        assert_eq!(a.addr("http"), None);
        assert_eq!(a.get("id"), Some("W1"));
        assert_eq!(a.get("client"), None);
        assert_eq!(a.fields().len(), 3);
    }

    #[test]
    fn flags_are_found_and_replaced_in_both_spellings() {
        let mut args = os(&["gateway", "--listen", "127.0.0.1:0", "--http-listen=127.0.0.1:0"]);
        assert_eq!(flag_value(&args, "--listen").as_deref(), Some("127.0.0.1:0"));
        assert_eq!(flag_value(&args, "--http-listen").as_deref(), Some("127.0.0.1:0"));
        assert!(has_flag(&args, "--http-listen"));
        assert!(!has_flag(&args, "--link-listen"));
        replace_flag_value(&mut args, "--listen", "127.0.0.1:5");
        replace_flag_value(&mut args, "--http-listen", "127.0.0.1:6");
        replace_flag_value(&mut args, "--link-listen", "127.0.0.1:7");
        assert_eq!(args, os(&["gateway", "--listen", "127.0.0.1:5", "--http-listen=127.0.0.1:6"]));
        assert_eq!(default_label(&os(&["dispatch", "--id", "W1"])), "dispatch W1");
        assert_eq!(default_label(&os(&["--set", "a=b"])), "a=b");
        assert_eq!(default_label(&[]), "tern");
    }

    #[test]
    fn log_ring_keeps_the_newest_lines_within_its_bound() {
        let mut ring = LogRing::new(20);
        ring.echo = false;
        for i in 0..10 {
            ring.push(format!("line {i}"));
        }
        assert_eq!(ring.since(0), "line 8\nline 9\n");
        assert_eq!(ring.since(9), "line 9\n");
        assert_eq!(ring.since(10), "");
        // One line longer than the bound is still kept (the newest line always is).
        ring.push("x".repeat(100));
        assert_eq!(ring.lines.len(), 1);
    }

    #[test]
    fn reads_the_announcement_and_keeps_draining() {
        // Prints the announcement, then far more output than a pipe buffer holds, then
        // creates a marker file: if nobody drained the pipes, the child would block in a
        // write and never get there.
        let script = r#"
            echo "fake listening client=127.0.0.1:1111 http=off id=$2"
            i=0; while [ $i -lt 3000 ]; do
                echo "stdout line $i padding padding padding padding padding"
                echo "stderr line $i padding padding padding padding padding" >&2
                i=$((i+1))
            done
            echo done >&2
            touch "$3"
            exec sleep 600
        "#;
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("finished");
        let options = ProcessOptions { log_bytes: 4096, ..ProcessOptions::default() };
        let args = ["--id", "X1", marker.to_str().unwrap()];
        let mut p = sh_with(script, &args, options).unwrap();
        assert_eq!(p.client_addr(), Some("127.0.0.1:1111".parse().unwrap()));
        assert_eq!(p.http_addr(), None);
        assert_eq!(p.id(), Some("X1"));
        assert!(p.is_running());
        assert!(p.pid().is_some());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !marker.exists() {
            assert!(Instant::now() < deadline, "child blocked on output:\n{}", p.logs());
            std::thread::sleep(POLL_INTERVAL);
        }
        // kill9 joins the reader threads, so everything written has been drained by now.
        p.kill9().unwrap();
        let logs = p.logs();
        assert!(logs.len() <= 4096 + 200, "bounded: {} bytes", logs.len());
        // The two streams are drained by two threads: whichever finished last has its last
        // line in the tail.
        assert!(logs.contains("out] stdout line 2999") || logs.contains("err] done"), "{logs}");
        assert!(logs.ends_with("killed with SIGKILL (signal: 9 (SIGKILL))\n"), "{logs}");
        assert!(!p.is_running());
        assert_eq!(p.pid(), None);
        assert!(matches!(p.kill9(), Err(ProcessError::NotRunning { .. })));
    }

    #[test]
    fn terminate_sends_sigterm() {
        // The shell runs `trap` on SIGTERM and exits 7: proof the signal was TERM, not KILL.
        let script = r#"
            trap 'echo got TERM >&2; exit 7' TERM
            echo "fake listening id=T"
            while true; do sleep 0.05; done
        "#;
        let mut p = sh(script, &[]).unwrap();
        let status = p.terminate().unwrap();
        assert_eq!(status.code(), Some(7), "{}", p.logs());
        assert!(p.logs().contains("got TERM"), "{}", p.logs());
        assert!(matches!(p.terminate(), Err(ProcessError::NotRunning { .. })));
    }

    #[test]
    fn terminate_kills_a_child_that_ignores_sigterm() {
        let script = r#"
            trap '' TERM
            echo "fake listening id=T"
            while true; do sleep 0.05; done
        "#;
        let options =
            ProcessOptions { stop_timeout: Duration::from_millis(200), ..Default::default() };
        let mut p = sh_with(script, &[], options).unwrap();
        let err = p.terminate().unwrap_err();
        assert!(matches!(err, ProcessError::StopTimeout { .. }), "{err}");
        assert!(!p.is_running());
    }

    #[test]
    fn an_early_exit_reports_status_and_logs() {
        let err = sh("echo 'bad config: no such key' >&2; exit 3", &[]).unwrap_err();
        match &err {
            ProcessError::Exited { status, logs, .. } => {
                assert_eq!(status.code(), Some(3));
                assert!(logs.contains("bad config: no such key"), "{logs}");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_silent_child_times_out_and_is_killed() {
        let options =
            ProcessOptions { ready_timeout: Duration::from_millis(200), ..Default::default() };
        let err = sh_with("exec sleep 600", &[], options).unwrap_err();
        assert!(matches!(err, ProcessError::NotReady { .. }), "{err}");
    }

    #[test]
    fn a_missing_binary_is_a_spawn_error() {
        let err = TernProcess::spawn("/nonexistent/tern", ["gateway"]).unwrap_err();
        assert!(matches!(err, ProcessError::Spawn { .. }), "{err}");
    }

    /// The "server" is `sh` announcing a bound port for `:0` (and any explicit address as
    /// given); the test checks that the restarts pass the bound address back.
    #[test]
    fn restart_reuses_the_announced_addresses() {
        let script = r#"
            # Announce a "bound" port for :0, explicit addresses unchanged.
            link=$2; case "$link" in *:0) link=127.0.0.1:4242 ;; esac
            echo "fake listening link=$link http=off id=W"
            echo "args: $*" >&2
            exec sleep 600
        "#;
        let mut p = sh(script, &["--link-listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(p.link_addr(), Some("127.0.0.1:4242".parse().unwrap()));
        assert_eq!(flag_value(p.args(), "--link-listen").as_deref(), Some("127.0.0.1:4242"));
        let first_pid = p.pid().unwrap();
        p.kill9().unwrap();
        p.start_again().unwrap();
        assert_ne!(p.pid().unwrap(), first_pid);
        wait_logs(&p, "args: --link-listen 127.0.0.1:4242");
        assert!(matches!(p.start_again(), Err(ProcessError::AlreadyRunning { .. })));
        p.restart().unwrap();
        assert_eq!(p.link_addr(), Some("127.0.0.1:4242".parse().unwrap()));
    }

    #[test]
    fn a_start_retries_while_the_address_is_in_use() {
        // Fails like a server whose port is taken on the first try, succeeds on the second
        // (the marker file remembers the first try).
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("tried");
        let script = r#"
            if [ ! -e "$1" ]; then
                touch "$1"
                echo 'Error: binding link address: Address already in use (os error 98)' >&2
                exit 1
            fi
            echo "fake listening id=R"
            exec sleep 600
        "#;
        let p = sh(script, &[marker.to_str().unwrap()]).unwrap();
        assert_eq!(p.id(), Some("R"));
        assert!(p.logs().contains("address in use; starting again"), "{}", p.logs());
    }

    #[test]
    fn drop_kills_the_child() {
        let p = sh("echo 'fake listening id=D'; exec sleep 600", &[]).unwrap();
        let pid = p.pid().unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(p);
        // Reaped by Drop, so the pid entry is gone (unless the pid was reused meanwhile, in
        // which case it is not our child: its parent differs).
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let ppid = std::process::id().to_string();
        assert!(
            !status.lines().any(|l| l.starts_with("PPid:") && l.ends_with(&ppid)),
            "child {pid} still ours"
        );
    }
}
