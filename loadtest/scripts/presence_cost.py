#!/usr/bin/env python3
"""Presence Redis cost per entry: memory, and server CPU per publish/refresh and per lookup.

Starts one throwaway redis-server (no persistence) on a free loopback port in a temp dir and
sends, pipelined through `redis-cli --pipe`, exactly what gateways and workers send
(presence/src/lib.rs): per entry `HSET {prefix}p:{user} {device} "{gw} {conn} {expires_ms}"` +
`PEXPIRE key 2*ttl` (publish; a refresh is the same pair), then `HGETALL key` per user (the
worker's routing lookup). Reports used_memory per entry and redis-server CPU
(/proc/<pid>/stat utime+stime) per operation. Bounded: ALARM_S seconds, the server is stopped in
`finally`.

    python3 loadtest/scripts/presence_cost.py --entries 200000 --user-len 24
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

ALARM_S = 180
CLK_TCK = os.sysconf("SC_CLK_TCK")


def resp(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def used_memory(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"], capture_output=True,
                         text=True, timeout=10).stdout
    return int(next(l for l in out.splitlines() if l.startswith("used_memory:")).split(":")[1])


def pipe(port, path):
    with open(path, "rb") as f:
        subprocess.run(["redis-cli", "-p", str(port), "--pipe"], stdin=f, check=True,
                       stdout=subprocess.DEVNULL, timeout=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=200000)
    ap.add_argument("--user-len", type=int, default=24, help="characters of each user id")
    args = ap.parse_args()

    def on_alarm(*_):
        raise TimeoutError(f"run exceeded {ALARM_S} s")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(ALARM_S)
    tmp = tempfile.mkdtemp(prefix="tern-presence-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", "--daemonize", "no",
                            "--dir", tmp], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            r = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                               text=True)
            if r.stdout.strip() == "PONG":
                break
            time.sleep(0.05)
        n = args.entries
        exp = int(time.time() * 1000) + 90000
        users = [f"u{i:0{args.user_len - 1}d}" for i in range(n)]
        pub, look = os.path.join(tmp, "pub.resp"), os.path.join(tmp, "look.resp")
        with open(pub, "wb") as f:
            for i, u in enumerate(users):
                key = f"tern:p:{u}"
                f.write(resp("HSET", key, "phone", f"gw-1a2b3c4d {i + 1} {exp}"))
                f.write(resp("PEXPIRE", key, 180000))
        with open(look, "wb") as f:
            for u in users:
                f.write(resp("HGETALL", f"tern:p:{u}"))
        m0 = used_memory(port)
        c0 = cpu_s(srv.pid)
        t0 = time.time()
        pipe(port, pub)  # first publish (creates the keys)
        t1 = time.time()
        c1 = cpu_s(srv.pid)
        m1 = used_memory(port)
        pipe(port, pub)  # refresh (same commands on existing keys)
        t2 = time.time()
        c2 = cpu_s(srv.pid)
        pipe(port, look)
        c3 = cpu_s(srv.pid)
        t3 = time.time()
        print(f"entries={n} user_id_len={args.user_len}")
        print(f"used_memory per entry: {(m1 - m0) / n:.0f} B  ({m0} -> {m1})")
        print(f"publish (HSET+PEXPIRE): {(c1 - c0) * 1e6 / n:.2f} us redis CPU/entry, "
              f"{n / (t1 - t0):.0f} entries/s wall through one redis-cli --pipe")
        print(f"refresh (HSET+PEXPIRE): {(c2 - c1) * 1e6 / n:.2f} us redis CPU/entry, "
              f"{n / (t2 - t1):.0f} entries/s wall")
        print(f"lookup (HGETALL): {(c3 - c2) * 1e6 / n:.2f} us redis CPU/user, "
              f"{n / (t3 - t2):.0f} lookups/s wall")
    finally:
        signal.alarm(0)
        srv.terminate()
        try:
            srv.wait(timeout=10)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
