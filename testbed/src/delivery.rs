//! How long a consumer held a dead token at each rotation, from the stand-in's record of API
//! calls: pure functions, so the benchmark's arithmetic is unit-tested.
//!
//! The stand-in kills the previous access token when it answers a refresh (as Eagle Eye does).
//! From that moment every call a consumer makes with what it holds is refused until it reads
//! the new token: its dead time for that rotation ends at its first accepted call. A consumer
//! that has not caught up by the next rotation is counted dead for the whole interval.

use std::time::{Duration, SystemTime};

use crate::standin::ApiCall;

/// One consumer's outcome for one rotation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeadTime {
    pub secs: f64,
    /// False when no call was accepted before the next rotation (or the end of the window).
    pub recovered: bool,
}

/// Dead time of `consumer` at each rotation in `rotations` (sorted), where rotation `i` is
/// judged up to rotation `i + 1`, and the last one up to `end`. `None` for a rotation during
/// which the consumer made no call at all: it was not running, and there is nothing to judge.
pub fn dead_times(
    rotations: &[SystemTime],
    end: SystemTime,
    calls: &[ApiCall],
    consumer: &str,
) -> Vec<Option<DeadTime>> {
    let mine: Vec<&ApiCall> = calls
        .iter()
        .filter(|c| c.consumer.as_deref() == Some(consumer))
        .collect();
    rotations
        .iter()
        .enumerate()
        .map(|(i, &at)| {
            let until = rotations.get(i + 1).copied().unwrap_or(end);
            let window: Vec<&&ApiCall> =
                mine.iter().filter(|c| c.at >= at && c.at < until).collect();
            if window.is_empty() {
                return None;
            }
            let secs = |t: SystemTime| t.duration_since(at).unwrap_or(Duration::ZERO).as_secs_f64();
            Some(match window.iter().find(|c| c.accepted) {
                Some(first) => DeadTime {
                    secs: secs(first.at),
                    recovered: true,
                },
                None => DeadTime {
                    secs: secs(until),
                    recovered: false,
                },
            })
        })
        .collect()
}

/// p50, p99 and max by nearest rank; `None` for no samples.
pub fn summary(samples: &[f64]) -> Option<(f64, f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let k = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[k - 1]
    };
    Some((rank(0.50), rank(0.99), sorted[sorted.len() - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: f64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs_f64(1_000_000.0 + secs)
    }

    fn call(secs: f64, consumer: &str, accepted: bool) -> ApiCall {
        ApiCall {
            at: t(secs),
            consumer: Some(consumer.into()),
            accepted,
        }
    }

    #[test]
    fn dead_time_ends_at_the_first_accepted_call_after_the_rotation() {
        let calls = [
            call(9.9, "a", true),
            call(10.1, "a", false),
            call(11.0, "a", false),
            call(12.5, "a", true),
            call(13.0, "a", true),
        ];
        let got = dead_times(&[t(10.0)], t(40.0), &calls, "a");
        let d = got[0].unwrap();
        assert!((d.secs - 2.5).abs() < 1e-6, "{d:?}");
        assert!(d.recovered);
    }

    #[test]
    fn a_consumer_that_never_catches_up_is_dead_for_the_whole_interval() {
        let calls = [
            call(1.0, "env", false),
            call(39.0, "env", false),
            call(41.0, "env", false),
        ];
        let got = dead_times(&[t(0.0), t(40.0)], t(80.0), &calls, "env");
        assert_eq!(
            got[0],
            Some(DeadTime {
                secs: 40.0,
                recovered: false
            })
        );
        assert_eq!(
            got[1],
            Some(DeadTime {
                secs: 40.0,
                recovered: false
            })
        );
    }

    #[test]
    fn other_consumers_calls_and_empty_windows_are_not_counted() {
        let calls = [call(1.0, "b", true), call(50.0, "a", true)];
        let got = dead_times(&[t(0.0), t(40.0)], t(80.0), &calls, "a");
        assert_eq!(got[0], None);
        assert!((got[1].unwrap().secs - 10.0).abs() < 1e-6);
    }

    #[test]
    fn percentiles_are_by_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(summary(&samples), Some((50.0, 99.0, 100.0)));
        assert_eq!(summary(&[3.0]), Some((3.0, 3.0, 3.0)));
        assert_eq!(summary(&[]), None);
    }
}
