//! `strftime_now(format)`, which transformers exposes to chat templates (Llama 3.x templates use it
//! to print today's date). Only the common C `strftime` fields are supported; the clock is UTC
//! because we have no time-zone database.

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, Timelike};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

pub(super) fn strftime_now(format: String) -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    format_unix(&format, secs)
}

pub(super) fn format_unix(format: &str, secs: i64) -> String {
    // Past chrono's range (some 262,000 years) only with a broken clock: the epoch stands in.
    let t = DateTime::from_timestamp(secs, 0).unwrap_or_default();
    let (year, month, day, yday) = (t.year(), t.month(), t.day(), t.ordinal());
    let (hour, minute, second) = (t.hour(), t.minute(), t.second());
    let weekday = t.weekday().num_days_from_monday() as usize;
    let month_name = MONTHS[month as usize - 1];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('B') => out.push_str(month_name),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('%') => out.push('%'),
            // Unknown field: keep it verbatim, as glibc does.
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::format_unix;

    #[test]
    fn formats_known_instants() {
        // 2024-07-26 13:05:09 UTC, a Friday, day 208 of a leap year.
        let t = 1_721_999_109;
        assert_eq!(format_unix("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(format_unix("%A %B %e %H:%M:%S %j %y %I%p %%", t), "Friday July 26 13:05:09 208 24 01PM %");
        assert_eq!(format_unix("%Y-%m-%d %a", 0), "1970-01-01 Thu");
        // 2000-02-29 (leap day of a century leap year).
        assert_eq!(format_unix("%Y-%m-%d %j", 951_782_400), "2000-02-29 060");
        // The second before the epoch, and the last day of a leap year.
        assert_eq!(format_unix("%Y-%m-%d %H:%M:%S %a %j", -1), "1969-12-31 23:59:59 Wed 365");
        assert_eq!(format_unix("%Y-%m-%d %A %j", 1_735_603_200), "2024-12-31 Tuesday 366");
    }
}
