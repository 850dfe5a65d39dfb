//! Pinning to CPUs (`server.io_cpus`): the CPU list syntax of `taskset -c` and systemd's
//! `CPUAffinity=` ("0-3,6"), checked against the CPUs this process may use; the process is
//! confined to the list before it starts any thread, and each I/O thread pins itself to its
//! own CPU of it when it starts.
//!
//! Why pin: a gateway I/O thread handing one group message to thousands of connections is
//! one long burst of kernel TCP work. Left to the scheduler, two such threads (two gateway
//! processes on one host, say) sometimes share a core while another runs something else, and
//! the burst takes twice as long; one thread per core keeps every burst on its own core.

use std::fmt;

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// A `server.io_cpus` value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuListError {
    /// Not the `0-3,6` syntax.
    #[error("{0:?} is not a CPU list (write it like \"0-3,6\")")]
    Syntax(String),
    /// A CPU this process may not run on (not present, or outside its cgroup/taskset).
    #[error("CPU {cpu} is not one this process may run on (allowed: {allowed})")]
    NotAllowed { cpu: usize, allowed: CpuList },
    /// The process's own CPU mask could not be read.
    #[error("reading this process's CPUs: {0}")]
    Mask(String),
}

/// CPU numbers in the order given; I/O thread `i` gets `cpus[i % len]`. Empty: no pinning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    /// Parses `0-3,6` (ranges inclusive, spaces allowed); "" is the empty list.
    pub fn parse(s: &str) -> Result<Self, CpuListError> {
        let bad = || CpuListError::Syntax(s.to_owned());
        let mut cpus = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (part, part),
            };
            let lo: usize = lo.parse().map_err(|_| bad())?;
            let hi: usize = hi.parse().map_err(|_| bad())?;
            if lo > hi || hi >= CpuSet::MAX_CPU {
                return Err(bad());
            }
            cpus.extend(lo..=hi);
        }
        if cpus.is_empty() && !s.trim().is_empty() {
            return Err(bad());
        }
        Ok(Self(cpus))
    }

    /// Whether no CPU is named (no pinning).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The CPU of I/O thread `index`, if pinning.
    pub fn for_thread(&self, index: usize) -> Option<usize> {
        (!self.0.is_empty()).then(|| self.0[index % self.0.len()])
    }

    /// Errs unless every CPU named is one this process may run on.
    pub fn check_allowed(&self) -> Result<(), CpuListError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mask = sched_getaffinity(None).map_err(|e| CpuListError::Mask(e.to_string()))?;
        match self.0.iter().find(|&&c| !mask.is_set(c)) {
            None => Ok(()),
            Some(&cpu) => {
                let allowed = CpuList((0..CpuSet::MAX_CPU).filter(|&c| mask.is_set(c)).collect());
                Err(CpuListError::NotAllowed { cpu, allowed })
            }
        }
    }
}

impl fmt::Display for CpuList {
    /// Runs of consecutive CPUs as ranges: `0-3,6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        let mut sep = "";
        while i < self.0.len() {
            let start = self.0[i];
            while i + 1 < self.0.len() && self.0[i + 1] == self.0[i] + 1 {
                i += 1;
            }
            match self.0[i] {
                end if end == start => write!(f, "{sep}{start}")?,
                end => write!(f, "{sep}{start}-{end}")?,
            }
            sep = ",";
            i += 1;
        }
        Ok(())
    }
}

impl CpuList {
    /// Confines the calling thread to the listed CPUs (all of them): threads it starts later
    /// inherit that, so a process calls it before starting any (its runtime, its I/O threads,
    /// which then narrow to their own CPU). Nothing happens for the empty list.
    pub fn confine_current_thread(&self) -> std::io::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut set = CpuSet::new();
        for &cpu in &self.0 {
            set.set(cpu);
        }
        sched_setaffinity(None, &set).map_err(std::io::Error::from)
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_taskset_syntax() {
        assert_eq!(CpuList::parse("").unwrap(), CpuList::default());
        assert_eq!(CpuList::parse(" ").unwrap(), CpuList::default());
        assert_eq!(CpuList::parse("1").unwrap(), CpuList(vec![1]));
        assert_eq!(CpuList::parse("0-3, 6").unwrap(), CpuList(vec![0, 1, 2, 3, 6]));
        assert_eq!(CpuList::parse("2,0").unwrap(), CpuList(vec![2, 0]));
        for bad in ["x", "3-1", "-1", "1-", ",", "1;2", "99999"] {
            assert_eq!(CpuList::parse(bad), Err(CpuListError::Syntax(bad.into())), "{bad}");
        }
    }

    #[test]
    fn threads_take_the_cpus_in_turn() {
        let l = CpuList::parse("4,6").unwrap();
        assert_eq!(
            (0..3).map(|i| l.for_thread(i)).collect::<Vec<_>>(),
            [Some(4), Some(6), Some(4)]
        );
        assert_eq!(CpuList::default().for_thread(0), None);
    }

    #[test]
    fn prints_ranges() {
        assert_eq!(CpuList::parse("0-3,6,8-9").unwrap().to_string(), "0-3,6,8-9");
        assert_eq!(CpuList::parse("5").unwrap().to_string(), "5");
    }

    #[test]
    fn a_cpu_outside_the_process_mask_is_refused() {
        // The last CPU a CpuSet can name is never one this test process runs on.
        let l = CpuList(vec![CpuSet::MAX_CPU - 1]);
        assert!(matches!(l.check_allowed(), Err(CpuListError::NotAllowed { .. })));
        // The CPU this thread runs on now is allowed.
        let here = rustix::thread::sched_getcpu();
        assert_eq!(CpuList(vec![here]).check_allowed(), Ok(()));
    }
}
