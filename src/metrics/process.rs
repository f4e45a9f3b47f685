//! The standard `process_*` metrics of this process (the names every
//! Prometheus client library exports), read at each scrape through sysinfo,
//! which reads `/proc/self` (the systemd unit leaves it visible:
//! `ProtectProc=invisible` hides other users' processes, not our own).

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// One reading of the process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessSample {
    /// User and system CPU time since start.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// None when `/proc/self/fd` cannot be listed.
    pub open_fds: Option<u64>,
    /// The soft limit on open files, when known.
    pub max_fds: Option<u64>,
    /// Unix seconds (sysinfo's resolution is one second).
    pub start_time: u64,
}

/// Keeps sysinfo's state between scrapes (it reuses its buffers).
pub struct ProcessProbe {
    system: Option<System>,
    pid: Option<Pid>,
}

impl ProcessProbe {
    pub fn new() -> ProcessProbe {
        ProcessProbe {
            system: System::new().ok(),
            pid: sysinfo::get_current_pid().ok(),
        }
    }

    /// None where sysinfo cannot read the process (not Linux, no /proc).
    pub fn sample(&mut self) -> Option<ProcessSample> {
        let (sys, pid) = (self.system.as_mut()?, self.pid?);
        // CPU times and memory only: no thread list, no disk counters.
        let what = ProcessRefreshKind::nothing()
            .with_cpu()
            .with_memory()
            .without_tasks();
        sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[pid]), false, what);
        let p = sys.process(pid)?;
        Some(ProcessSample {
            cpu_seconds: p.accumulated_cpu_time() as f64 / 1000.0,
            resident_bytes: p.memory(),
            virtual_bytes: p.virtual_memory(),
            open_fds: p.open_files().map(|n| n as u64),
            max_fds: p.open_files_limit().map(|n| n as u64),
            start_time: p.start_time(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read() {
        let Some(s) = ProcessProbe::new().sample() else {
            panic!("sysinfo could not read this process from /proc");
        };
        assert!(s.resident_bytes > 0, "{s:?}");
        assert!(s.virtual_bytes >= s.resident_bytes, "{s:?}");
        assert!(s.open_fds.is_some_and(|n| n >= 3), "{s:?}");
        // Started within the last day, not at the epoch.
        let now = crate::time::unix_now() as u64;
        assert!(s.start_time <= now && now - s.start_time < 86_400, "{s:?}");
    }
}
