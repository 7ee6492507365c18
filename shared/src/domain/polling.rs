//! The payment status polling schedule: how long to wait before asking the bank again.
//!
//! Most Berlin Group banks have no status webhooks, so a payment is followed by polling,
//! and the delays are SQS message timers (no timer lives in memory). The schedule is a
//! list of phases `(delay, until)`: while the time since polling started is below
//! `until`, the next poll is `delay` later. Past the last phase's `until` we give up (the
//! user is told the status is unknown). The default is every 5 s in the first minute,
//! every 30 s until 5 minutes, every 5 minutes until 24 hours.
//!
//! Bank errors do not follow the schedule: a failing bank is asked again after an
//! exponential backoff with jitter ([`PollSchedule::error_delay`]), and a 429 after the
//! bank's `Retry-After`, whichever is longer; never sooner than the schedule.

use std::time::Duration;

use super::error::echo;

/// Why a schedule was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid polling schedule: {0}")]
pub struct ScheduleError(String);

/// The longest delay one SQS message can carry.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// One phase: poll every `delay` while the elapsed time is below `until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollPhase {
    pub delay: Duration,
    pub until: Duration,
}

/// What to do after a poll that did not find a final status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextPoll {
    /// Ask again after this delay.
    After(Duration),
    /// Stop: the schedule's horizon has passed without a final status.
    GiveUp,
}

/// A polling schedule (module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollSchedule {
    phases: Vec<PollPhase>,
    /// First delay of the error backoff (doubled per consecutive error).
    error_base: Duration,
}

impl Default for PollSchedule {
    fn default() -> Self {
        Self::new(vec![
            PollPhase {
                delay: Duration::from_secs(5),
                until: Duration::from_secs(60),
            },
            PollPhase {
                delay: Duration::from_secs(30),
                until: Duration::from_secs(300),
            },
            PollPhase {
                delay: Duration::from_secs(300),
                until: Duration::from_secs(24 * 3600),
            },
        ])
        .expect("the default schedule is valid")
    }
}

impl PollSchedule {
    /// A schedule from its phases: at least one; delays between 1 s and [`MAX_DELAY`];
    /// `until` strictly increasing.
    ///
    /// # Errors
    /// [`ScheduleError`] naming the rule broken.
    pub fn new(phases: Vec<PollPhase>) -> Result<Self, ScheduleError> {
        let invalid = |reason: &str| ScheduleError(reason.to_owned());
        if phases.is_empty() {
            return Err(invalid("at least one phase is needed"));
        }
        let mut previous = Duration::ZERO;
        for phase in &phases {
            if phase.delay < Duration::from_secs(1) || phase.delay > MAX_DELAY {
                return Err(invalid("every delay must be between 1 s and 900 s"));
            }
            if phase.until <= previous {
                return Err(invalid("phase ends must increase"));
            }
            previous = phase.until;
        }
        Ok(Self {
            phases,
            error_base: Duration::from_secs(2),
        })
    }

    /// Parses `"5:60,30:300,300:86400"` (delay:until in seconds, per phase), the format of
    /// the `PAYMENT_POLL_SCHEDULE` setting.
    ///
    /// # Errors
    /// [`ScheduleError`] for a malformed or invalid schedule.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let malformed = || {
            ScheduleError(format!(
                "expected delay:until pairs in seconds, got '{}'",
                echo(text).escape_debug()
            ))
        };
        let phases = text
            .split(',')
            .map(|pair| {
                let (delay, until) = pair.trim().split_once(':').ok_or_else(malformed)?;
                let secs = |s: &str| s.trim().parse::<u64>().map_err(|_| malformed());
                Ok(PollPhase {
                    delay: Duration::from_secs(secs(delay)?),
                    until: Duration::from_secs(secs(until)?),
                })
            })
            .collect::<Result<Vec<_>, ScheduleError>>()?;
        Self::new(phases)
    }

    /// When polling gives up.
    pub fn horizon(&self) -> Duration {
        self.phases.last().map_or(Duration::ZERO, |p| p.until)
    }

    /// The delay of the first poll after polling starts.
    pub fn first_delay(&self) -> Duration {
        self.phases[0].delay
    }

    /// After a poll at `elapsed` (since polling started) that found no final status.
    pub fn next(&self, elapsed: Duration) -> NextPoll {
        match self.phases.iter().find(|p| elapsed < p.until) {
            Some(phase) => NextPoll::After(phase.delay),
            None => NextPoll::GiveUp,
        }
    }

    /// After the `errors`-th consecutive bank error (1 = the first) at `elapsed`: the
    /// schedule's delay, or the exponential backoff `base × 2^(errors-1)` with up to 50 %
    /// jitter (`jitter` in 0.0..1.0 picks where), or the bank's `retry_after`, whichever is
    /// longest, capped at [`MAX_DELAY`]. Gives up past the horizon like [`Self::next`].
    pub fn error_delay(
        &self,
        elapsed: Duration,
        errors: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> NextPoll {
        let NextPoll::After(scheduled) = self.next(elapsed) else {
            return NextPoll::GiveUp;
        };
        let exponent = errors.saturating_sub(1).min(16);
        let backoff = self.error_base.saturating_mul(1u32 << exponent);
        let jittered = backoff + backoff.mul_f64(jitter.clamp(0.0, 1.0) * 0.5);
        let delay = scheduled
            .max(jittered)
            .max(retry_after.unwrap_or_default())
            .min(MAX_DELAY);
        NextPoll::After(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Runs the schedule on a fake clock from the first poll until it gives up; returns
    /// the poll times (seconds since polling started).
    fn poll_times(schedule: &PollSchedule) -> Vec<u64> {
        let mut t = schedule.first_delay();
        let mut times = vec![];
        loop {
            times.push(t.as_secs());
            match schedule.next(t) {
                NextPoll::After(delay) => t += delay,
                NextPoll::GiveUp => return times,
            }
        }
    }

    #[test]
    fn default_delays_are_5s_30s_5min_and_stop_at_24h() {
        let schedule = PollSchedule::default();
        let times = poll_times(&schedule);
        // First minute: every 5 s.
        let first: Vec<u64> = times.iter().copied().filter(|t| *t <= 60).collect();
        assert_eq!(first, (1..=12).map(|i| i * 5).collect::<Vec<_>>());
        // Until 5 minutes: every 30 s.
        let second: Vec<u64> = times
            .iter()
            .copied()
            .filter(|t| *t > 60 && *t <= 300)
            .collect();
        assert_eq!(second, (3..=10).map(|i| i * 30).collect::<Vec<_>>());
        // Then every 5 minutes, the last poll at 24 h.
        let rest: Vec<u64> = times.iter().copied().filter(|t| *t > 300).collect();
        assert!(rest.windows(2).all(|w| w[1] - w[0] == 300));
        assert_eq!(rest.first(), Some(&600));
        assert_eq!(times.last(), Some(&86_400));
        // Bank calls per payment that never becomes final: 12 + 8 + 287.
        assert_eq!(times.len(), 12 + 8 + (86_400 - 300) / 300);
        assert_eq!(times.len(), 307);
        assert_eq!(schedule.next(secs(86_400)), NextPoll::GiveUp);
        assert_eq!(schedule.next(secs(86_399)), NextPoll::After(secs(300)));
    }

    #[test]
    fn parse_matches_the_default_and_rejects_nonsense() {
        assert_eq!(
            PollSchedule::parse("5:60, 30:300,300:86400").unwrap(),
            PollSchedule::default()
        );
        for bad in [
            "",
            "5",
            "5:60,30:30",
            "0:60",
            "901:1000",
            "a:b",
            "5:60;30:300",
        ] {
            assert!(PollSchedule::parse(bad).is_err(), "{bad:?}");
        }
        let short = PollSchedule::parse("1:3").unwrap();
        assert_eq!(poll_times(&short), vec![1, 2, 3]);
    }

    #[test]
    fn errors_back_off_exponentially_and_honour_retry_after() {
        let s = PollSchedule::default();
        // In the 5-minute phase the schedule dominates small backoffs.
        assert_eq!(
            s.error_delay(secs(400), 1, None, 0.0),
            NextPoll::After(secs(300))
        );
        // In the first minute: 5 s schedule vs 2, 4, 8, 16 s backoff.
        let at = |errors, jitter| s.error_delay(secs(10), errors, None, jitter);
        assert_eq!(at(1, 0.0), NextPoll::After(secs(5)));
        assert_eq!(at(2, 0.0), NextPoll::After(secs(5)));
        assert_eq!(at(3, 0.0), NextPoll::After(secs(8)));
        assert_eq!(at(4, 0.0), NextPoll::After(secs(16)));
        assert_eq!(at(4, 1.0), NextPoll::After(secs(24)));
        assert_eq!(at(30, 1.0), NextPoll::After(MAX_DELAY));
        // A 429's Retry-After wins when it is longer.
        assert_eq!(
            s.error_delay(secs(10), 1, Some(secs(42)), 0.5),
            NextPoll::After(secs(42))
        );
        assert_eq!(
            s.error_delay(secs(10), 1, Some(secs(4000)), 0.5),
            NextPoll::After(MAX_DELAY)
        );
        assert_eq!(s.error_delay(secs(90_000), 1, None, 0.0), NextPoll::GiveUp);
    }

    proptest! {
        #[test]
        fn delays_stay_within_sqs_limits(
            elapsed in 0u64..200_000,
            errors in 0u32..100,
            retry in proptest::option::of(0u64..100_000),
            jitter in 0.0f64..1.0,
        ) {
            let s = PollSchedule::default();
            for next in [
                s.next(secs(elapsed)),
                s.error_delay(secs(elapsed), errors, retry.map(secs), jitter),
            ] {
                match next {
                    NextPoll::After(d) => {
                        prop_assert!(d >= secs(1) && d <= MAX_DELAY);
                        prop_assert!(elapsed < 86_400);
                    }
                    NextPoll::GiveUp => prop_assert!(elapsed >= 86_400),
                }
            }
        }
    }
}
