//! Readings from `/proc`: a process's resident memory and CPU time, the machine's busy time, and
//! the kernel's TCP socket memory.

use serde::{Deserialize, Serialize};

/// `VmRSS` of process `pid` in bytes, or `None` when it cannot be read.
pub fn vm_rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&text)
}

/// Open sockets of process `pid` (its `/proc/PID/fd` entries that are sockets), or `None`
/// when they cannot be read. For a gateway: its client connections plus a few links.
pub fn socket_count(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let n = dir
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .count();
    Some(n as u64)
}

/// Parses the `VmRSS:  1234 kB` line of a `/proc/PID/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The `TCP:` line of `/proc/net/sockstat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpMem {
    /// Sockets in use.
    pub inuse: u64,
    /// Sockets allocated (including time-wait and orphans).
    pub alloc: u64,
    /// Kernel TCP buffer memory in pages.
    pub mem_pages: u64,
    /// The same in bytes (pages × the page size).
    pub mem_bytes: u64,
}

/// Reads `/proc/net/sockstat`, or `None` when it cannot be read.
pub fn tcp_mem() -> Option<TcpMem> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    parse_sockstat(&text, page_size())
}

/// Parses the `TCP: inuse 5 orphan 0 tw 0 alloc 7 mem 1` line.
pub fn parse_sockstat(text: &str, page_size: u64) -> Option<TcpMem> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> Option<u64> {
        let i = words.iter().position(|w| *w == name)?;
        words.get(i + 1)?.parse().ok()
    };
    let mem_pages = field("mem")?;
    Some(TcpMem {
        inuse: field("inuse")?,
        alloc: field("alloc")?,
        mem_pages,
        mem_bytes: mem_pages * page_size,
    })
}

/// The kernel page size, from `/proc/self/smaps` (`KernelPageSize`), else 4096.
fn page_size() -> u64 {
    std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("KernelPageSize:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(4096, |kb| kb * 1024)
}

/// CPU time of process `pid` so far (utime + stime of all its threads, children not included),
/// in clock ticks, or `None` when it cannot be read (e.g. the process is gone).
pub fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_process_cpu_ticks(&text)
}

/// The utime + stime fields (14 and 15) of a `/proc/PID/stat` text. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_process_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Time on CPU of process `pid`'s live threads so far, in nanoseconds, from the first field
/// of every `/proc/PID/task/TID/schedstat` (exact, unlike the 10 ms ticks of `stat`; threads
/// that have exited are not counted, so measure long-lived servers with it), or `None` when
/// it cannot be read.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread that exits between the listing and the read is skipped.
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// The machine's CPU time so far, from the `cpu` line of `/proc/stat` (clock ticks, all cores).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineCpu {
    /// user + nice + system + irq + softirq + steal.
    pub busy: u64,
    /// busy + idle + iowait.
    pub total: u64,
}

/// Reads `/proc/stat`, or `None` when it cannot be read.
pub fn machine_cpu() -> Option<MachineCpu> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Parses the `cpu  user nice system idle iowait irq softirq steal ...` line (guest time is
/// already inside user and nice, so it is not added again).
pub fn parse_proc_stat(text: &str) -> Option<MachineCpu> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map_while(|w| w.parse().ok()).collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    if v.len() < 4 {
        return None;
    }
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Some(MachineCpu { busy, total: busy + at(3) + at(4) })
}

/// Clock ticks per second of `/proc` CPU times (`sysconf(_SC_CLK_TCK)`, from the auxiliary
/// vector).
pub fn clock_ticks_per_sec() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

/// Cores online (what `/proc/stat` times add up over).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_sockstat() {
        let status = "Name:\ttern\nVmPeak:\t  9000 kB\nVmRSS:\t  1234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        let sock = "sockets: used 100\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 3\nUDP: inuse 1\n";
        assert_eq!(
            parse_sockstat(sock, 4096),
            Some(TcpMem { inuse: 5, alloc: 7, mem_pages: 3, mem_bytes: 3 * 4096 })
        );
    }

    #[test]
    fn parses_cpu_times() {
        let stat = "42 (tern serve) (x) S 1 42 42 0 -1 4194560 900 0 0 0 170 30 0 0 20 0 9 0";
        assert_eq!(parse_process_cpu_ticks(stat), Some(200));
        assert_eq!(parse_process_cpu_ticks("42 (x) S 1"), None);
        let proc_stat = "cpu  10 1 5 100 4 2 3 1 7 0\ncpu0 5 0 2 50 2 1 1 0 0 0\n";
        assert_eq!(parse_proc_stat(proc_stat), Some(MachineCpu { busy: 22, total: 126 }));
        assert_eq!(parse_proc_stat("intr 1 2\n"), None);
        assert!(process_cpu_ticks(std::process::id()).is_some());
        assert!(machine_cpu().is_some_and(|m| m.total >= m.busy));
        assert!(clock_ticks_per_sec() >= 1);
    }

    #[test]
    fn own_cpu_nanoseconds_grow_with_work() {
        let before = process_cpu_ns(std::process::id()).unwrap();
        // Spin until this thread has been on the CPU for a while (no wall-clock bound).
        let mut x = 0u64;
        while process_cpu_ns(std::process::id()).unwrap() <= before {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
            }
        }
        std::hint::black_box(x);
        assert_eq!(process_cpu_ns(u32::MAX), None);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(vm_rss_bytes(std::process::id()).is_some_and(|b| b > 0));
        let before = socket_count(std::process::id()).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(socket_count(std::process::id()), Some(before + 1));
        drop(l);
    }
}
