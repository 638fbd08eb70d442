//! The process's own figures under the standard `process_*` names (CPU time, memory, file
//! descriptors, threads, start time), read from `/proc` at each scrape. A figure that
//! cannot be read is left out, and off Linux (no `/proc`) all of them are.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The collector registered beside the app's metrics.
#[derive(Debug, Default)]
pub struct Process;

/// One reading of the process's figures; `None`: not readable here.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Figures {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
    threads: Option<u64>,
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let f = Figures::read();
        let e = &mut encoder;
        // Counters are named without `_total`: the encoder appends it.
        counter(
            e,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            f.cpu_seconds,
        )?;
        gauge(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            f.resident_bytes,
        )?;
        gauge(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            f.virtual_bytes,
        )?;
        gauge(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            f.open_fds,
        )?;
        gauge(
            e,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            f.max_fds,
        )?;
        gauge(
            e,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            f.start_time_seconds,
        )?;
        gauge(
            e,
            "process_threads",
            "Number of OS threads in the process.",
            f.threads,
        )
    }
}

fn counter<N: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<N>,
) -> Result<(), std::fmt::Error> {
    let Some(value) = value else {
        return Ok(());
    };
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: Option<N>,
) -> Result<(), std::fmt::Error> {
    let Some(value) = value else {
        return Ok(());
    };
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// What `/proc/self/stat` says, in its own units (clock ticks, pages).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    /// User plus system time.
    cpu_ticks: u64,
    threads: u64,
    /// Since boot.
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// Parses `/proc/self/stat`. The command name (field 2) is in parentheses and may hold
/// spaces or parentheses itself, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 (the state) is the first one here; field N is at index N - 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The boot time (`btime`, seconds since the epoch) from `/proc/stat`.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit on open files from `/proc/self/limits` (`None` when unlimited).
fn parse_max_open_files(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Figures {
    /// Combines the readings; `ticks` is clock ticks per second, `page` the page size.
    fn from_readings(
        stat: Option<Stat>,
        boot_time: Option<u64>,
        ticks: Option<u64>,
        page: Option<u64>,
    ) -> Figures {
        let ticks = ticks.filter(|&t| t > 0);
        Figures {
            cpu_seconds: stat.zip(ticks).map(|(s, t)| s.cpu_ticks as f64 / t as f64),
            resident_bytes: stat
                .zip(page)
                .map(|(s, p)| s.resident_pages.saturating_mul(p)),
            virtual_bytes: stat.map(|s| s.virtual_bytes),
            start_time_seconds: stat
                .zip(ticks)
                .zip(boot_time)
                .map(|((s, t), boot)| boot as f64 + s.start_ticks as f64 / t as f64),
            threads: stat.map(|s| s.threads),
            open_fds: None,
            max_fds: None,
        }
    }

    #[cfg(target_os = "linux")]
    fn read() -> Figures {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let stat = read("/proc/self/stat").and_then(|t| parse_stat(&t));
        let boot_time = read("/proc/stat").and_then(|t| parse_boot_time(&t));
        let figures = Figures::from_readings(
            stat,
            boot_time,
            sysconf(libc::_SC_CLK_TCK),
            sysconf(libc::_SC_PAGESIZE),
        );
        Figures {
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as u64),
            max_fds: read("/proc/self/limits").and_then(|t| parse_max_open_files(&t)),
            ..figures
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn read() -> Figures {
        Figures::default()
    }
}

#[cfg(target_os = "linux")]
fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf reads a system constant; it takes no pointers and has no
    // preconditions (an unknown name returns -1, turned into `None` here).
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stat_line_is_read_from_after_the_command_name() {
        // A command name with spaces and a parenthesis, as `/proc/self/stat` can show.
        let line = "4242 (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 50 0 0 20 0 7 0 \
                    12345 104857600 2560 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        let stat = parse_stat(line);
        assert_eq!(
            stat,
            Some(Stat {
                cpu_ticks: 200,
                threads: 7,
                start_ticks: 12345,
                virtual_bytes: 104_857_600,
                resident_pages: 2560,
            })
        );
        let f = Figures::from_readings(stat, Some(1_700_000_000), Some(100), Some(4096));
        assert_eq!(f.cpu_seconds, Some(2.0));
        assert_eq!(f.resident_bytes, Some(2560 * 4096));
        let start = f.start_time_seconds.unwrap_or_default();
        assert!((start - 1_700_000_123.45).abs() < 1e-3, "{start}");
        assert_eq!(f.threads, Some(7));
    }

    #[test]
    fn an_unreadable_figure_is_left_out() {
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
        let f = Figures::from_readings(None, None, Some(100), Some(4096));
        assert_eq!(f, Figures::default());
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024));
        assert_eq!(
            parse_max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }
}
