//! What `tether bench` reads about a process from `/proc` (Linux): its
//! resident memory and the CPU time it has used, for a server given by
//! `--server-pid` or for the load generator itself.

use std::time::Duration;

use anyhow::Context;

/// A process: `Pid(n)`, or this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    Pid(u32),
    Me,
}

impl Proc {
    fn path(self, file: &str) -> String {
        match self {
            Proc::Pid(pid) => format!("/proc/{pid}/{file}"),
            Proc::Me => format!("/proc/self/{file}"),
        }
    }

    /// Its resident set size in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(self) -> anyhow::Result<u64> {
        let path = self.path("status");
        let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS line in {path}"))
    }

    /// The CPU time its threads have used, user and system (`utime` +
    /// `stime` of `/proc/PID/stat`), in clock ticks of [`clock_tick`].
    pub fn cpu_time(self) -> anyhow::Result<Duration> {
        let path = self.path("stat");
        let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // The command name (field 2) may hold spaces and parentheses: the
        // fields counted from the last ')' on are fixed (state is field 3).
        let rest = s.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15: 11 and 12 after state.
        let tick = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("no field {} in {path}", i + 3))
        };
        let ticks = tick(11)? + tick(12)?;
        Ok(clock_tick() * u32::try_from(ticks).context("CPU time out of range")?)
    }
}

/// One clock tick of `/proc/PID/stat` (`USER_HZ`): the `AT_CLKTCK` entry
/// of this process's auxiliary vector, 10 ms when it cannot be read.
pub fn clock_tick() -> Duration {
    static TICK: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *TICK.get_or_init(|| {
        const AT_CLKTCK: u64 = 17;
        let hz = std::fs::read("/proc/self/auxv").ok().and_then(|auxv| {
            auxv.chunks_exact(16).find_map(|e| {
                let key = u64::from_ne_bytes(e[..8].try_into().ok()?);
                let value = u64::from_ne_bytes(e[8..].try_into().ok()?);
                (key == AT_CLKTCK && value > 0).then_some(value)
            })
        });
        Duration::from_nanos(1_000_000_000 / hz.unwrap_or(100))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(Proc::Me.rss_kib().unwrap() > 0);
        assert!(Proc::Pid(std::process::id()).rss_kib().unwrap() > 0);
        let t = Proc::Me.cpu_time().unwrap();
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(60) {
            std::hint::black_box(0u64);
        }
        assert!(Proc::Me.cpu_time().unwrap() > t);
        assert_eq!(clock_tick(), Duration::from_millis(10));
    }
}
