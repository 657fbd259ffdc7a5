//! Process figures from /proc (Linux): a daemon's RSS, CPU ticks, page faults and sleeps, the
//! tool's own CPU, and the file-descriptor limit.

use std::fs;
use std::io;
use std::process::Command;

/// Resident set size of `pid` in bytes (VmRSS of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    Ok(status_field(pid, "VmRSS:")? * 1024)
}

/// The number after `name` in /proc/PID/status.
fn status_field(pid: u32, name: &str) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(name))
        .ok_or_else(|| io::Error::other(format!("no {name} in /proc/{pid}/status")))?;
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other(format!("cannot parse {line:?}")))
}

/// Numeric fields of /proc/PID/stat (`None`: this process), indexed by field number.
fn stat_fields(pid: Option<u32>) -> io::Result<Vec<u64>> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = fs::read_to_string(&path)?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other(format!("cannot parse {path}")))?;
    // Fields 1 and 2 (pid, name) and the state letter (field 3) are not numbers: zeros keep
    // the indices equal to the field numbers of proc(5).
    let mut fields = vec![0; 4];
    fields.extend(
        rest.split_whitespace()
            .skip(1)
            .map(|w| w.parse().unwrap_or(0)),
    );
    if fields.len() < 16 {
        return Err(io::Error::other(format!("cannot parse {path}")));
    }
    Ok(fields)
}

/// utime + stime of a process in clock ticks (fields 14 and 15 of /proc/PID/stat); `None`
/// means this process.
pub fn cpu_ticks(pid: Option<u32>) -> io::Result<u64> {
    let f = stat_fields(pid)?;
    Ok(f[14] + f[15])
}

/// What a daemon's CPU time went with: page faults (minor + major, fields 10 and 12 of
/// /proc/PID/stat), each a fresh page of memory, and voluntary context switches, each a
/// sleep in its event loop's poll (and so, mostly, one loop turn).
pub fn faults_and_sleeps(pid: u32) -> io::Result<(u64, u64)> {
    let f = stat_fields(Some(pid))?;
    Ok((
        f[10] + f[12],
        status_field(pid, "voluntary_ctxt_switches:")?,
    ))
}

/// Clock ticks per second (`getconf CLK_TCK`), and whether it was measured rather than assumed
/// to be the usual 100.
pub fn clk_tck() -> (u64, bool) {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t| t > 0)
        .map_or((100, false), |t| (t, true))
}

/// CPU seconds of a daemon (if a pid was given) and of this tool, sampled together.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    pub daemon_ticks: Option<u64>,
    /// The daemons' page faults and sleeps, summed (see [`faults_and_sleeps`]).
    pub daemon_faults_sleeps: Option<(u64, u64)>,
    pub tool_ticks: u64,
}

impl CpuSample {
    /// Reads the summed CPU ticks of the daemons `pids` (None if there are none or one
    /// cannot be read) and of this tool.
    pub fn take(pids: &[u32]) -> CpuSample {
        let ticks: Option<Vec<u64>> = pids.iter().map(|&p| cpu_ticks(Some(p)).ok()).collect();
        let activity: Option<Vec<(u64, u64)>> =
            pids.iter().map(|&p| faults_and_sleeps(p).ok()).collect();
        CpuSample {
            daemon_ticks: ticks.filter(|t| !t.is_empty()).map(|t| t.iter().sum()),
            daemon_faults_sleeps: activity
                .filter(|a| !a.is_empty())
                .map(|a| a.iter().fold((0, 0), |s, x| (s.0 + x.0, s.1 + x.1))),
            tool_ticks: cpu_ticks(None).unwrap_or(0),
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) after.
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    use rlimit::Resource;
    let (_, hard) = rlimit::getrlimit(Resource::NOFILE)?;
    rlimit::setrlimit(Resource::NOFILE, hard, hard)?;
    rlimit::getrlimit(Resource::NOFILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_figures() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        let burn: u64 = (0..2_000_000u64).map(|x| x ^ (x >> 3)).sum();
        assert!(burn > 0);
        assert!(cpu_ticks(None).is_ok());
        assert!(cpu_ticks(Some(me)).is_ok());
        assert!(clk_tck().0 > 0);
    }
}
