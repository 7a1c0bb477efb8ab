//! What the kernel says a process has used: CPU time from `/proc/PID/stat`
//! and resident memory from `/proc/PID/status`. Both cover every thread of
//! the process, which is what a server's cost per RPC has to count.

use std::fs;
use std::time::Duration;

use anyhow::{anyhow, Context};

/// User plus system CPU time the process has used so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_cpu_ticks(&stat).with_context(|| format!("parsing {path}"))?;
    Ok(ticks_to_duration(ticks, clock_ticks_per_second()))
}

/// Resident set size in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("parsing {path}"))
}

/// `utime + stime` (fields 14 and 15) in clock ticks. The command name
/// (field 2) is in parentheses and may itself hold spaces or parentheses,
/// so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| anyhow!("no command name"))?;
    // After the name: field 3 (state) is index 0, so utime (14) is index 11.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("only {} fields", fields.len() + 2))?
            .parse::<u64>()
            .map_err(|e| anyhow!("field {}: {e}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

fn parse_vm_rss(status: &str) -> anyhow::Result<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS line"))?;
    let kib: u64 = line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .map_err(|e| anyhow!("VmRSS: {e}"))?;
    Ok(kib * 1024)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

fn ticks_to_duration(ticks: u64, hz: u64) -> Duration {
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_a_command_name_with_spaces_and_parens() {
        // A real line's shape, with a name that would break naive splitting.
        let stat = "4242 (my (odd) server) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    1234 567 0 0 20 0 3 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat).unwrap(), 1234 + 567);
    }

    #[test]
    fn a_truncated_stat_line_is_an_error() {
        assert!(parse_cpu_ticks("1 (x) S 1 2 3").is_err());
        assert!(parse_cpu_ticks("no parens").is_err());
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tserver\nVmPeak:\t  9000 kB\nVmRSS:\t   2048 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status).unwrap(), 2048 * 1024);
        assert!(parse_vm_rss("Name:\tx\n").is_err());
    }

    #[test]
    fn this_process_has_used_some_cpu_and_memory() {
        // Burn a little CPU so the tick counter must have moved.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let pid = std::process::id();
        assert!(cpu_time(pid).unwrap() > Duration::ZERO);
        assert!(rss_bytes(pid).unwrap() > 1024 * 1024);
    }

    #[test]
    fn ticks_convert_at_the_kernel_rate() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
    }
}
