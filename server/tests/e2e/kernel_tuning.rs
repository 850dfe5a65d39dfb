//! kernel-tuning/: check.sh runs read-only against this machine for every profile, apply.sh
//! --dry-run prints a `sysctl -w` for every key and changes nothing, and malformed profiles are
//! refused with exit status 2 by both scripts. Nothing here changes kernel settings: apply.sh
//! only ever runs with --dry-run (or as an unprivileged user), and with stubs for `sysctl`,
//! `install` and `systemctl` first on PATH that record any call and fail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PROFILES: [&str; 2] = ["gateway-1m", "loadgen"];

fn tuning_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("kernel-tuning")
}

/// (key, op, value) for every setting line of a profile: what the scripts must report on.
fn profile_keys(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || line.starts_with(';')
            || line.starts_with('@')
        {
            continue;
        }
        let (key, op, value) = if let Some((k, v)) = line.split_once(">=") {
            (k, ">=", v)
        } else {
            let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("bad line: {line}"));
            (k, "=", v)
        };
        out.push((
            key.trim().to_string(),
            op.to_string(),
            value.split_whitespace().collect::<Vec<_>>().join(" "),
        ));
    }
    assert!(!out.is_empty(), "profile has no keys");
    out
}

fn profile_file(name: &str) -> PathBuf {
    tuning_dir().join("profiles").join(format!("{name}.conf"))
}

/// A directory of stub `sysctl`, `install` and `systemctl` that append to `calls` and fail, so
/// that a script which forgot --dry-run cannot change this machine.
fn stub_path(dir: &Path) -> String {
    let bin = dir.join("stub-bin");
    fs::create_dir_all(&bin).unwrap();
    for name in ["sysctl", "install", "systemctl"] {
        let p = bin.join(name);
        let calls = dir.join("calls");
        fs::write(&p, format!("#!/bin/sh\necho \"{name} $*\" >>'{}'\nexit 1\n", calls.display()))
            .unwrap();
        Command::new("chmod").arg("+x").arg(&p).status().unwrap();
    }
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

/// Runs a script with a 10 s bound (each takes well under a second).
fn run(script: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(tuning_dir().join(script));
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run_bounded(cmd)
}

fn run_bounded(mut cmd: Command) -> Output {
    let mut child = cmd.spawn().expect("spawn script");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("script ran longer than 10 s: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn row<'a>(stdout: &'a str, key: &str) -> Option<&'a str> {
    stdout.lines().find(|l| l.split_whitespace().next() == Some(key))
}

fn proc_value(key: &str) -> Option<String> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    fs::read_to_string(path).ok().map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[test]
fn check_reports_every_key_of_each_profile_on_this_machine() {
    for name in PROFILES {
        let keys = profile_keys(&fs::read_to_string(profile_file(name)).unwrap());
        let out = run("check.sh", &[name], &[]);
        let (stdout, stderr) = text(&out);
        let code = out.status.code();
        assert!(matches!(code, Some(0) | Some(1)), "{name}: exit {code:?}\n{stdout}\n{stderr}");
        for (key, op, value) in &keys {
            let line =
                row(&stdout, key).unwrap_or_else(|| panic!("{name}: no row for {key}\n{stdout}"));
            let status = line.split_whitespace().last().unwrap();
            assert!(["OK", "DIFFERS", "MISSING"].contains(&status), "{line}");
            let wanted = if op == ">=" { format!(">= {value}") } else { value.clone() };
            assert!(line.contains(&wanted), "{name}: row does not show wanted '{wanted}': {line}");
            // The row's verdict agrees with /proc/sys read here.
            match proc_value(key) {
                None => assert_eq!(status, "MISSING", "{line}"),
                Some(cur) => assert!(line.contains(&cur) && status != "MISSING", "{line} vs {cur}"),
            }
        }
        assert!(stdout.contains("nofile soft") && stdout.contains("nofile hard"), "{stdout}");
        let all_ok = stdout.contains(" 0 DIFFERS, 0 MISSING");
        assert_eq!(code == Some(0), all_ok, "exit status disagrees with the summary\n{stdout}");
    }
}

#[test]
fn check_exit_status_follows_a_fake_proc_tree() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("fake.conf");
    fs::write(&profile, "# test\nfs.file-max >= 1000\nnet.ipv4.tcp_mem = 1 2 3\nnet.netfilter.nf_conntrack_max >= 5\n").unwrap();
    let proc = dir.path().join("proc");
    let put = |key: &str, v: &str| {
        let p = proc.join(key.replace('.', "/"));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, v).unwrap();
    };
    put("fs.file-max", "5000\n"); // higher than wanted: fine for `>=`
    put("net.ipv4.tcp_mem", "1\t2\t3\n");
    put("net.netfilter.nf_conntrack_max", "5\n");
    let env = [("TERN_TUNING_PROC_SYS", proc.to_str().unwrap())];
    let p = profile.to_str().unwrap();
    let out = run("check.sh", &[p], &env);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(row(&stdout, "net.ipv4.tcp_mem").unwrap().ends_with("OK"), "{stdout}");

    put("net.ipv4.tcp_mem", "1 2 4\n"); // last field of a triple differs
    let out = run("check.sh", &[p], &env);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(row(&stdout, "net.ipv4.tcp_mem").unwrap().ends_with("DIFFERS"), "{stdout}");

    put("net.ipv4.tcp_mem", "1 2 3\n");
    fs::remove_file(proc.join("net/netfilter/nf_conntrack_max")).unwrap(); // module not loaded
    let out = run("check.sh", &[p], &env);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        row(&stdout, "net.netfilter.nf_conntrack_max").unwrap().ends_with("MISSING"),
        "{stdout}"
    );

    // apply.sh --dry-run stops before doing anything when a non-optional key is absent.
    fs::remove_file(proc.join("fs/file-max")).unwrap();
    let out = run("apply.sh", &[p, "--dry-run"], &[env[0], ("PATH", &stub_path(dir.path()))]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("fs.file-max does not exist"), "{stderr}");
    assert!(!stdout.contains("sysctl -w"), "{stdout}");
    assert!(!dir.path().join("calls").exists());
}

#[test]
fn apply_dry_run_prints_every_key_and_changes_nothing() {
    let watched =
        ["net.core.somaxconn", "fs.file-max", "net.ipv4.tcp_mem", "net.ipv4.tcp_fin_timeout"];
    for name in PROFILES {
        let dir = tempfile::tempdir().unwrap();
        let keys = profile_keys(&fs::read_to_string(profile_file(name)).unwrap());
        let before: Vec<_> = watched.iter().map(|k| proc_value(k)).collect();
        let sysctl_d = PathBuf::from(format!("/etc/sysctl.d/90-tern-{name}.conf"));
        let existed = sysctl_d.exists();

        let out = run("apply.sh", &[name, "--dry-run"], &[("PATH", &stub_path(dir.path()))]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{name}\n{stdout}\n{stderr}");
        for (key, _, _) in &keys {
            // Either it would set the key, or (an at-least key already higher here) keeps it.
            let set = stdout.contains(&format!("sysctl -w {key}="));
            let kept = stdout.contains(&format!("keep {key}:"));
            assert!(set || kept, "{name}: no sysctl -w line for {key}\n{stdout}");
        }
        assert!(stdout.contains(&format!("would write {}", sysctl_d.display())), "{stdout}");
        assert!(stdout.contains("/etc/security/limits.d/"), "{stdout}");
        if name == "gateway-1m" {
            assert!(
                stdout.contains("/etc/systemd/system/tern-gateway.service.d/limits.conf"),
                "{stdout}"
            );
        }
        assert!(stdout.contains("nothing was changed"), "{stdout}");

        let after: Vec<_> = watched.iter().map(|k| proc_value(k)).collect();
        assert_eq!(before, after, "{name}: /proc/sys changed during a dry run");
        assert_eq!(sysctl_d.exists(), existed, "{name}: dry run wrote {}", sysctl_d.display());
        let calls = fs::read_to_string(dir.path().join("calls")).unwrap_or_default();
        assert!(calls.is_empty(), "{name}: dry run executed: {calls}");
    }
}

#[test]
fn malformed_profiles_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = stub_path(dir.path());
    let cases = [
        ("no-operator.conf", "fs.file-max 100\n", "expected 'key = value'"),
        (
            "trailing-comment.conf",
            "net.core.somaxconn = 4096 # why\n",
            "comments go on their own line",
        ),
        (
            "at-least-triple.conf",
            "net.ipv4.tcp_mem >= 1 2 3\n",
            "'>=' needs a single non-negative integer",
        ),
        (
            "duplicate.conf",
            "vm.max_map_count = 1\nvm.max_map_count = 2\n",
            "duplicate key vm.max_map_count",
        ),
        ("bad-key.conf", "Net/core = 1\n", "bad sysctl key"),
        ("empty.conf", "# nothing\n\n", "no 'key = value' lines"),
        (
            "directive.conf",
            "@limits = no-such-file.conf\nfs.file-max >= 1\n",
            "@limits names a missing file",
        ),
    ];
    for (file, body, message) in cases {
        let p = dir.path().join(file);
        fs::write(&p, body).unwrap();
        let p = p.to_str().unwrap();
        for (script, args) in
            [("check.sh", vec![p]), ("apply.sh", vec![p, "--dry-run"]), ("apply.sh", vec![p])]
        {
            let out = run(script, &args, &[("PATH", &path)]);
            let (stdout, stderr) = text(&out);
            assert_eq!(out.status.code(), Some(2), "{script} {file}\n{stdout}\n{stderr}");
            assert!(
                stderr.contains(message),
                "{script} {file}: stderr lacks '{message}': {stderr}"
            );
            assert!(
                stderr.contains(&format!("{file}:")),
                "{script} {file}: no file:line in {stderr}"
            );
            assert!(!stdout.contains("sysctl -w"), "{stdout}");
        }
    }
    // Usage errors are 2 as well.
    for (script, args) in [
        ("check.sh", vec![]),
        ("check.sh", vec!["no-such-profile"]),
        ("apply.sh", vec!["gateway-1m", "--force"]),
    ] {
        let out = run(script, &args, &[("PATH", &path)]);
        assert_eq!(out.status.code(), Some(2), "{script} {args:?}: {:?}", text(&out));
    }
    assert!(!dir.path().join("calls").exists(), "a malformed profile reached a command");
}

#[test]
fn apply_refuses_to_run_without_root() {
    // Only meaningful when the test runs as root and can drop to nobody; otherwise the test's
    // own user is the unprivileged one.
    let dir = tempfile::tempdir().unwrap();
    let script = tuning_dir().join("apply.sh");
    let is_root =
        Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    let mut cmd = if is_root {
        if Command::new("setpriv").arg("--version").output().is_err() {
            eprintln!("setpriv not found: skipped");
            return;
        }
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&script);
        c
    } else {
        Command::new(&script)
    };
    cmd.arg("gateway-1m")
        .env("PATH", stub_path(dir.path()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = run_bounded(cmd);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("must run as root"), "{stderr}");
    assert!(!stdout.contains("sysctl -w"), "{stdout}");
}
