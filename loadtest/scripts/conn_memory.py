#!/usr/bin/env python3
"""Gateway memory per idle logged-in connection (distributed mode, loopback, bounded).

Starts, in a temp dir on free loopback ports: a presence Redis (no persistence), a store Redis
(appendonly yes, appendfsync always), one `tern dispatch` (store.backend=redis) and one
`tern gateway`. Then opens N connections, logs each in (JWT HS256), waits for every LoginOk and
reads:
  - the gateway's VmRSS (/proc/<pid>/status) before and after  -> bytes per connection
  - kernel TCP buffer memory (/proc/net/sockstat "TCP: ... mem", pages) and Slab
    (/proc/meminfo) before and after (both ends of every loopback connection count)
  - presence Redis `used_memory` before and after              -> bytes per presence entry
Then every connection sends one Ping per round (PING_ROUNDS rounds) and the gateway's CPU time
(/proc/<pid>/stat utime+stime) over the rounds gives CPU per heartbeat.

Every process it starts is stopped (SIGTERM, then SIGKILL) in `finally`; the whole run is capped
by ALARM_S seconds (SIGALRM). No dependency beyond the Python standard library.

    ulimit -n 20000
    python3 loadtest/scripts/conn_memory.py --tern target/release/tern --conns 10000
    python3 loadtest/scripts/conn_memory.py --tern target/release/tern --conns 10000 --tls

`--tls` connects with TLS 1.3 (ALPN tern/1, the gateway's generated certificate, not verified)
on the same port: the difference to a plain run is what TLS costs per idle connection.

Frames: 4-byte big-endian length + protobuf tern.v1.Envelope (docs/PROTOCOL.md).
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

ALARM_S = 300
PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- protobuf, by hand (tiny subset)

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, v):
    return varint(num << 3) + varint(v)


def field_bytes(num, b):
    return varint((num << 3) | 2) + varint(len(b)) + b


def frame(payload):
    return len(payload).to_bytes(4, "big") + payload


def login_frame(token, request_id=1):
    login = field_bytes(1, token.encode()) + field_varint(2, 1)
    return frame(field_varint(1, request_id) + field_bytes(10, login))


def ping_frame(now_ms, request_id):
    # request_id 0 is reserved for server pushes: a Ping carries a non-zero one.
    return frame(field_varint(1, request_id) + field_bytes(12, field_varint(1, now_ms)))


def body_field(payload):
    """The field number of the Envelope's oneof body (10..59), or None."""
    i = 0
    while i < len(payload):
        key = 0
        shift = 0
        while True:
            b = payload[i]
            i += 1
            key |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        num, wt = key >> 3, key & 7
        if wt == 0:
            while payload[i] & 0x80:
                i += 1
            i += 1
        elif wt == 2:
            ln = 0
            shift = 0
            while True:
                b = payload[i]
                i += 1
                ln |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            if num >= 10:
                return num
            i += ln
        else:
            return None
    return None


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(key, user, device, now):
    head = b64url(b'{"alg":"HS256","typ":"JWT"}')
    claims = b64url(json.dumps({"sub": user, "did": device, "iat": now, "exp": now + 3600},
                               separators=(",", ":")).encode())
    sig = hmac.new(key, f"{head}.{claims}".encode(), hashlib.sha256).digest()
    return f"{head}.{claims}.{b64url(sig)}"


# ---------------------------------------------------------------- processes and /proc

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def sockstat():
    out = {}
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                t = line.split()[1:]
                out = {t[i]: int(t[i + 1]) for i in range(0, len(t), 2)}
    return out


def slab_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    return 0


def redis_used_memory(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"], capture_output=True,
                         text=True, timeout=10).stdout
    for line in out.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    raise RuntimeError("no used_memory")


def redis_dbsize(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "dbsize"], capture_output=True,
                         text=True, timeout=10).stdout
    return int(out.strip() or 0)


def wait_redis(port, deadline):
    while time.time() < deadline:
        r = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                           text=True)
        if r.stdout.strip() == "PONG":
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis on {port} did not start")


def first_line(proc, deadline):
    """The `... listening ...` line a tern process prints first on stdout."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        if sel.select(timeout=0.2):
            chunk = os.read(proc.stdout.fileno(), 4096)
            buf += chunk
            if b"\n" in buf:
                return buf.split(b"\n", 1)[0].decode()
    raise RuntimeError("no listening line")


def field(line, name):
    for tok in line.split():
        if tok.startswith(name + "="):
            return tok.split("=", 1)[1]
    raise RuntimeError(f"no {name}= in {line!r}")


# ---------------------------------------------------------------- client

class Conn:
    __slots__ = ("reader", "writer")


async def read_frame(reader):
    hdr = await reader.readexactly(4)
    return await reader.readexactly(int.from_bytes(hdr, "big"))


def tls_context():
    """TLS 1.3 with ALPN tern/1; the gateway's self-signed certificate is not verified."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["tern/1"])
    return ctx


async def open_and_login(host, port, key, i, sem, conns, now, tls):
    async with sem:
        if tls is None:
            reader, writer = await asyncio.open_connection(host, port)
        else:
            reader, writer = await asyncio.open_connection(host, port, ssl=tls,
                                                           server_hostname="localhost")
        writer.write(login_frame(jwt(key, f"u{i}", "phone", now)))
        await writer.drain()
        while True:
            got = body_field(await read_frame(reader))
            if got == 11:  # LoginOk
                break
            if got in (14, 15):
                raise RuntimeError(f"login {i} refused (field {got})")
        c = Conn()
        c.reader, c.writer = reader, writer
        conns.append(c)


async def ping_round(conns, sem, request_id):
    async def one(c):
        async with sem:
            c.writer.write(ping_frame(int(time.time() * 1000), request_id))
            await c.writer.drain()
            while body_field(await read_frame(c.reader)) != 13:  # Pong
                pass
    await asyncio.gather(*(one(c) for c in conns))


async def client_phase(args, gw_host, gw_port, key, gw_pid, pres_port, report):
    sem = asyncio.Semaphore(args.concurrency)
    conns = []
    now = int(time.time())
    t0 = time.time()
    cpu0 = cpu_s(gw_pid)
    tls = tls_context() if args.tls else None
    await asyncio.gather(*(open_and_login(gw_host, gw_port, key, i, sem, conns, now, tls)
                           for i in range(args.conns)))
    report["login_wall_s"] = round(time.time() - t0, 2)
    report["login_gateway_cpu_s"] = round(cpu_s(gw_pid) - cpu0, 2)
    # Let presence publishing and allocator settle.
    deadline = time.time() + 20
    while time.time() < deadline and redis_dbsize(pres_port) < args.conns:
        await asyncio.sleep(0.25)
    await asyncio.sleep(args.settle)
    report["after"] = snapshot(gw_pid, pres_port)
    # Heartbeats: every connection pings once per round.
    cpu0, t0 = cpu_s(gw_pid), time.time()
    for r in range(args.ping_rounds):
        await ping_round(conns, sem, 2 + r)
    report["pings"] = args.ping_rounds * len(conns)
    report["ping_wall_s"] = round(time.time() - t0, 2)
    report["ping_gateway_cpu_s"] = round(cpu_s(gw_pid) - cpu0, 2)
    report["after_pings"] = snapshot(gw_pid, pres_port)
    for c in conns:
        c.writer.close()


def snapshot(gw_pid, pres_port):
    ss = sockstat()
    return {
        "gateway_rss_kib": rss_kib(gw_pid),
        "tcp_inuse": ss.get("inuse"),
        "tcp_mem_pages": ss.get("mem"),
        "slab_kib": slab_kib(),
        "presence_used_memory": redis_used_memory(pres_port),
        "presence_keys": redis_dbsize(pres_port),
    }


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tern", default="target/release/tern")
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=256, help="logins in flight")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds idle before 'after'")
    ap.add_argument("--ping-rounds", type=int, default=3)
    ap.add_argument("--tls", action="store_true", help="connect with TLS 1.3 (same port)")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.conns + 200
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        sys.exit(f"need {need} open files; run `ulimit -n 20000` first")

    def on_alarm(*_):
        raise TimeoutError(f"run exceeded {ALARM_S} s")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(ALARM_S)

    tmp = tempfile.mkdtemp(prefix="tern-connmem-")
    procs = []
    key = os.urandom(32)
    key_b64 = base64.b64encode(key).decode()
    report = {"conns": args.conns, "tls": args.tls, "tern": os.path.realpath(args.tern)}
    try:
        pres, store = free_port(), free_port()
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(pres), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        sdir = os.path.join(tmp, "store")
        os.mkdir(sdir)
        procs.append(subprocess.Popen(
            ["redis-server", "--port", str(store), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
             "--dir", sdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        dl = time.time() + 15
        wait_redis(pres, dl)
        wait_redis(store, dl)
        common = ["--set", f"cluster.presence_redis=redis://127.0.0.1:{pres}/",
                  "--set", f"auth.hs256_key={key_b64}", "--set", "server.log=warn",
                  "--set", "cluster.secret=" + base64.b64encode(os.urandom(32)).decode(),
                  "--data-dir", tmp]
        disp = subprocess.Popen(
            [args.tern, "dispatch", "--id", "w1", "--link-listen", "127.0.0.1:0",
             "--http-listen", "", "--set", "store.backend=redis",
             "--set", f"store.redis_url=redis://127.0.0.1:{store}/"] + common,
            stdout=subprocess.PIPE, stderr=open(os.path.join(tmp, "dispatch.log"), "wb"))
        procs.append(disp)
        link = field(first_line(disp, time.time() + 30), "link")
        gw = subprocess.Popen(
            [args.tern, "gateway", "--id", "g1", "--listen", "127.0.0.1:0",
             "--http-listen", "127.0.0.1:0", "--set", f"cluster.dispatch_workers={link}",
             # Idle connections send nothing during the run: keep them past the default 90 s.
             "--set", "gateway.idle_timeout=10m",
             "--set", f"gateway.max_connections={args.conns + 1000}"] + common,
            stdout=subprocess.PIPE, stderr=open(os.path.join(tmp, "gateway.log"), "wb"))
        procs.append(gw)
        client = field(first_line(gw, time.time() + 30), "client")
        host, port = client.rsplit(":", 1)
        time.sleep(2.0)  # links up, first presence marker written
        report["before"] = snapshot(gw.pid, pres)
        asyncio.run(client_phase(args, host, int(port), key, gw.pid, pres, report))

        b, a = report["before"], report["after"]
        n = args.conns
        report["per_conn"] = {
            "gateway_rss_bytes": round((a["gateway_rss_kib"] - b["gateway_rss_kib"]) * 1024 / n),
            "tcp_buffer_bytes_both_ends": round((a["tcp_mem_pages"] - b["tcp_mem_pages"])
                                                * PAGE / n),
            "slab_bytes_both_ends": round((a["slab_kib"] - b["slab_kib"]) * 1024 / n),
            "presence_bytes_per_entry": round((a["presence_used_memory"]
                                               - b["presence_used_memory"]) / n),
            "gateway_rss_bytes_after_pings": round(
                (report["after_pings"]["gateway_rss_kib"] - b["gateway_rss_kib"]) * 1024 / n),
            "gateway_cpu_us_per_ping": round(report["ping_gateway_cpu_s"] * 1e6
                                             / report["pings"], 1),
            "gateway_cpu_us_per_login": round(report["login_gateway_cpu_s"] * 1e6 / n, 1),
        }
        print(json.dumps(report, indent=2))
    finally:
        signal.alarm(0)
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        end = time.time() + 10
        for p in reversed(procs):
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
