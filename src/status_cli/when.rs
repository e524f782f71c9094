//! Times as a person reads them in a terminal: `in 11h`, `3m ago`, `89d`.

use jiff::{SignedDuration, Timestamp};

/// The size of a span, kubectl style: seconds up to 2 minutes, minutes up to 2 hours, hours
/// up to 2 days, then days. Always rounded down.
pub fn span(d: SignedDuration) -> String {
    let secs = d.as_secs().unsigned_abs();
    match secs {
        0..120 => format!("{secs}s"),
        120..7_200 => format!("{}m", secs / 60),
        7_200..172_800 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// `5m ago` for the past, `in 5m` for the future.
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    let d = t.duration_since(now);
    if d.is_negative() {
        format!("{} ago", span(d))
    } else {
        format!("in {}", span(d))
    }
}

/// Whole days from `now` to `t`, rounded down (negative once `t` has passed).
pub fn days_left(t: Timestamp, now: Timestamp) -> i64 {
    t.duration_since(now).as_secs().div_euclid(86_400)
}

/// `2027-02-26` (UTC).
pub fn date(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn spans_switch_unit_at_twice_the_next_unit() {
        let s = |n| span(SignedDuration::from_secs(n));
        assert_eq!(s(0), "0s");
        assert_eq!(s(119), "119s");
        assert_eq!(s(120), "2m");
        assert_eq!(s(7_199), "119m");
        assert_eq!(s(7_200), "2h");
        assert_eq!(s(43_000), "11h");
        assert_eq!(s(172_799), "47h");
        assert_eq!(s(172_800), "2d");
        assert_eq!(s(-600), "10m");
    }

    #[test]
    fn relative_times_say_which_side_of_now_they_are() {
        assert_eq!(relative(t(-300), t(0)), "5m ago");
        assert_eq!(relative(t(39_600), t(0)), "in 11h");
    }

    #[test]
    fn days_left_round_down_and_go_negative_after_the_deadline() {
        assert_eq!(days_left(t(3 * 86_400 - 1), t(0)), 2);
        assert_eq!(days_left(t(3 * 86_400), t(0)), 3);
        assert_eq!(days_left(t(-1), t(0)), -1);
    }
}
