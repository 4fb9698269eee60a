//! Where and when an experiment ran: the CPU (numbers from a 2-core laptop and a 64-core server
//! are different experiments) and a UTC timestamp for the report folder's name.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, Timelike};

/// The `model name` of the first processor in /proc/cpuinfo's text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string()).filter(|v| !v.is_empty())
    })
}

/// `AMD EPYC 7B13, 2 cores, linux x86_64`: the machine the numbers are from.
pub fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| cpu_model(&t))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores, {} {}", std::env::consts::OS, std::env::consts::ARCH)
}

/// `YYYYmmdd-HHMMSS` in UTC for `secs` since the Unix epoch.
pub fn utc_stamp(secs: u64) -> String {
    // Past chrono's range (some 262,000 years) only with a broken clock: the epoch stands in.
    let t = i64::try_from(secs).ok().and_then(|s| DateTime::from_timestamp(s, 0)).unwrap_or_default();
    format!("{:04}{:02}{:02}-{:02}{:02}{:02}", t.year(), t.month(), t.day(), t.hour(), t.minute(), t.second())
}

/// The current [`utc_stamp`].
pub fn utc_stamp_now() -> String {
    utc_stamp(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n\n\
                    processor\t: 1\nmodel name\t: other\n";
        assert_eq!(cpu_model(info).as_deref(), Some("AMD EPYC 7B13 64-Core Processor"));
        assert_eq!(cpu_model("processor: 0\n"), None);
        assert!(machine_line().contains("cores"));
    }

    #[test]
    fn utc_stamps_match_known_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        // date -u -d @951782400 → 2000-02-29 00:00:00 (a leap day of a century leap year)
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        // date -u -d @1764663084 → 2025-12-02 08:11:24
        assert_eq!(utc_stamp(1_764_663_084), "20251202-081124");
        // date -u -d @4102444799 → 2099-12-31 23:59:59
        assert_eq!(utc_stamp(4_102_444_799), "20991231-235959");
    }
}
