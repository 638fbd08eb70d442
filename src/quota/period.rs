//! Budget periods: the UTC day and month a moment falls in, named for counters
//! (`d:2026-12-01`, `m:2026-12`), with when each ends and how long its record is kept.

const DAY_US: u64 = 86_400_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub name: String,
    /// When the period ends (µs since the epoch).
    pub ends_us: u64,
    /// How long a record of it is kept once used (reported by `/v1/usage` meanwhile).
    pub keep_us: u64,
}

impl Period {
    /// The UTC day of `now` (µs since the epoch).
    pub fn day(now: u64) -> Period {
        let days = now / DAY_US;
        let (y, m, d) = civil_from_days(days as i64);
        Period {
            name: format!("d:{y:04}-{m:02}-{d:02}"),
            ends_us: (days + 1) * DAY_US,
            keep_us: 3 * DAY_US,
        }
    }

    /// The UTC month of `now`.
    pub fn month(now: u64) -> Period {
        let (y, m, _) = civil_from_days((now / DAY_US) as i64);
        let (next_y, next_m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        let ends_days = days_from_civil(next_y, next_m, 1);
        Period {
            name: format!("m:{y:04}-{m:02}"),
            ends_us: ends_days.max(0) as u64 * DAY_US,
            keep_us: 70 * DAY_US,
        }
    }
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_months_are_named_and_end_at_utc_midnight() {
        // 2026-12-31 23:59:59 UTC.
        let now = 1_798_761_599_000_000;
        let day = Period::day(now);
        assert_eq!(day.name, "d:2026-12-31");
        assert_eq!(day.ends_us, now + 1_000_000);
        let month = Period::month(now);
        assert_eq!(month.name, "m:2026-12");
        assert_eq!(month.ends_us, now + 1_000_000);
        assert_eq!(Period::day(now + 1_000_000).name, "d:2027-01-01");
        // A leap day.
        assert_eq!(Period::day(1_709_164_800_000_000).name, "d:2024-02-29");
        for days in [-1_000, 0, 59, 60, 365, 20_000, 100_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
