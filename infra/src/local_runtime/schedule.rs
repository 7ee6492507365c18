//! EventBridge schedules: `rate(...)` and `cron(...)` expressions (UTC), fired on a virtual
//! clock that can run faster than real time, plus fire-now.
//!
//! The virtual clock starts at the wall-clock time the [`Scheduler`] is created and
//! advances `time_scale` times as fast as real time. Rate schedules first fire one period
//! after that start (as a new rule does in AWS), cron schedules at their next matching
//! minute. Runs of a schedule may overlap, as in AWS. If the clock got far ahead of a
//! schedule (the machine slept), the missed runs are skipped, not replayed.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, TimeZone, Timelike, Utc};
use serde_json::{Value, json};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::{Invoke, InvokeError};

/// Account id of the made-up rule ARNs.
const ACCOUNT_ID: &str = "123456789012";
const FALLBACK_REGION: &str = "eu-central-1";
const FIRST_YEAR: u32 = 1970;
const LAST_YEAR: u32 = 2199;

/// One `Type: Schedule`/`ScheduleV2` event of the template.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    pub name: String,
    pub function: String,
    /// `rate(...)` or `cron(...)`.
    pub expression: String,
    pub enabled: bool,
    /// The template's `Input`, parsed; replaces the Scheduled Event when given.
    pub input: Option<Value>,
}

/// A parsed schedule expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleExpr {
    Rate(Duration),
    Cron(Cron),
}

impl ScheduleExpr {
    /// Parses `rate(N unit)` or `cron(min hour dom month dow year)`.
    pub fn parse(expression: &str) -> Result<Self, String> {
        let text = expression.trim();
        if let Some(inner) = text
            .strip_prefix("rate(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            return parse_rate(inner).map(ScheduleExpr::Rate);
        }
        if let Some(inner) = text
            .strip_prefix("cron(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            return Cron::parse(inner).map(ScheduleExpr::Cron);
        }
        Err(format!(
            "unsupported schedule expression {expression:?}: expected rate(...) or cron(...)"
        ))
    }

    /// The first run strictly after `t` (for a rate: `t` plus the period); `None` when a
    /// cron expression has no run left before the end of 2199.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            ScheduleExpr::Rate(period) => chrono::Duration::from_std(*period)
                .ok()
                .and_then(|period| t.checked_add_signed(period)),
            ScheduleExpr::Cron(cron) => cron.next_after(t),
        }
    }
}

fn parse_rate(inner: &str) -> Result<Duration, String> {
    let parts: Vec<&str> = inner.split_whitespace().collect();
    let [value, unit] = parts[..] else {
        return Err(format!(
            "rate({inner}): expected rate(<value> <unit>), e.g. rate(5 minutes)"
        ));
    };
    let value: u64 = value
        .parse()
        .map_err(|_| format!("rate({inner}): {value:?} is not a positive whole number"))?;
    if value == 0 {
        return Err(format!("rate({inner}): the value must be at least 1"));
    }
    let (seconds, singular) = match unit {
        "minute" => (60, true),
        "minutes" => (60, false),
        "hour" => (3600, true),
        "hours" => (3600, false),
        "day" => (86_400, true),
        "days" => (86_400, false),
        other => {
            return Err(format!(
                "rate({inner}): unknown unit {other:?} (minute(s), hour(s) or day(s))"
            ));
        }
    };
    if singular != (value == 1) {
        return Err(format!(
            "rate({inner}): use the singular unit for 1 and the plural for more (rate(1 minute), rate(5 minutes))"
        ));
    }
    value
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("rate({inner}): too long"))
}

/// An AWS cron expression: `minutes hours day-of-month month day-of-week year`, UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: Field,
    hours: Field,
    /// `None` for `?`.
    days_of_month: Option<Field>,
    months: Field,
    /// `None` for `?`; 1 = Sunday.
    days_of_week: Option<Field>,
    years: Field,
}

/// The allowed values of one cron field.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    min: u32,
    allowed: Vec<bool>,
}

impl Field {
    fn contains(&self, value: u32) -> bool {
        value
            .checked_sub(self.min)
            .and_then(|index| self.allowed.get(index as usize))
            .copied()
            .unwrap_or(false)
    }

    /// The smallest allowed value ≥ `from`.
    fn next_from(&self, from: u32) -> Option<u32> {
        let start = from.max(self.min);
        (start..self.min + self.allowed.len() as u32).find(|value| self.contains(*value))
    }
}

struct FieldKind {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names of the values from `min` on.
    names: &'static [&'static str],
}

const MINUTES: FieldKind = FieldKind {
    name: "minutes",
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: FieldKind = FieldKind {
    name: "hours",
    min: 0,
    max: 23,
    names: &[],
};
const DAYS_OF_MONTH: FieldKind = FieldKind {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: FieldKind = FieldKind {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
const DAYS_OF_WEEK: FieldKind = FieldKind {
    name: "day-of-week",
    min: 1,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};
const YEARS: FieldKind = FieldKind {
    name: "year",
    min: FIRST_YEAR,
    max: LAST_YEAR,
    names: &[],
};

impl FieldKind {
    fn value(&self, text: &str) -> Result<u32, String> {
        let value = match text.parse::<u32>() {
            Ok(number) => number,
            Err(_) => self
                .names
                .iter()
                .position(|name| name.eq_ignore_ascii_case(text))
                .map(|index| self.min + index as u32)
                .ok_or_else(|| format!("{}: {text:?} is not a valid value", self.name))?,
        };
        if value < self.min || value > self.max {
            return Err(format!(
                "{}: {value} is outside {}-{}",
                self.name, self.min, self.max
            ));
        }
        Ok(value)
    }

    fn parse(&self, text: &str) -> Result<Field, String> {
        // Month and weekday names contain L and W (JUL, WED): look past them.
        let without_names = self
            .names
            .iter()
            .fold(text.to_ascii_uppercase(), |rest, name| {
                rest.replace(name, "")
            });
        if let Some(special) = without_names.chars().find(|c| matches!(c, 'L' | 'W' | '#')) {
            return Err(format!(
                "{}: {text:?} uses {special:?}; L, W and # are not supported by the local scheduler",
                self.name
            ));
        }
        let mut allowed = vec![false; (self.max - self.min + 1) as usize];
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((range, step)) => {
                    let step: u32 = step
                        .parse()
                        .ok()
                        .filter(|step| *step >= 1)
                        .ok_or_else(|| format!("{}: bad step in {part:?}", self.name))?;
                    (range, Some(step))
                }
                None => (part, None),
            };
            let (from, to) = if range == "*" {
                (self.min, self.max)
            } else if let Some((from, to)) = range.split_once('-') {
                (self.value(from)?, self.value(to)?)
            } else if range.is_empty() {
                return Err(format!("{}: empty element in {text:?}", self.name));
            } else {
                let from = self.value(range)?;
                // `5/15` means from 5 to the end in steps of 15.
                (from, if step.is_some() { self.max } else { from })
            };
            if from > to {
                return Err(format!("{}: range {range:?} runs backwards", self.name));
            }
            for value in (from..=to).step_by(step.unwrap_or(1) as usize) {
                allowed[(value - self.min) as usize] = true;
            }
        }
        Ok(Field {
            min: self.min,
            allowed,
        })
    }
}

impl Cron {
    /// Parses the six fields inside `cron(...)`.
    pub fn parse(fields: &str) -> Result<Cron, String> {
        let parts: Vec<&str> = fields.split_whitespace().collect();
        let [minutes, hours, dom, month, dow, year] = parts[..] else {
            return Err(format!(
                "cron({fields}): expected 6 fields (minutes hours day-of-month month day-of-week year), got {}",
                parts.len()
            ));
        };
        let wrap = |error: String| format!("cron({fields}): {error}");
        for (kind, text) in [
            (&MINUTES, minutes),
            (&HOURS, hours),
            (&MONTHS, month),
            (&YEARS, year),
        ] {
            if text.contains('?') {
                return Err(wrap(format!(
                    "{}: ? is only allowed in day-of-month or day-of-week",
                    kind.name
                )));
            }
        }
        let (days_of_month, days_of_week) = match (dom == "?", dow == "?") {
            (true, true) => {
                return Err(wrap(
                    "only one of day-of-month and day-of-week may be ?".to_owned(),
                ));
            }
            (false, false) => {
                return Err(wrap(
                    "one of day-of-month and day-of-week must be ? (they cannot both be given)"
                        .to_owned(),
                ));
            }
            (true, false) => (None, Some(DAYS_OF_WEEK.parse(dow).map_err(wrap)?)),
            (false, true) => (Some(DAYS_OF_MONTH.parse(dom).map_err(wrap)?), None),
        };
        Ok(Cron {
            minutes: MINUTES.parse(minutes).map_err(wrap)?,
            hours: HOURS.parse(hours).map_err(wrap)?,
            days_of_month,
            months: MONTHS.parse(month).map_err(wrap)?,
            days_of_week,
            years: YEARS.parse(year).map_err(wrap)?,
        })
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        match (&self.days_of_month, &self.days_of_week) {
            (Some(days), _) => days.contains(date.day()),
            (None, Some(weekdays)) => weekdays.contains(date.weekday().number_from_sunday()),
            (None, None) => true,
        }
    }

    /// The first matching minute strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // The next whole minute after t.
        let start = t.with_second(0)?.with_nanosecond(0)? + chrono::Duration::minutes(1);
        let mut date = start.date_naive();
        let mut hour = start.hour();
        let mut minute = start.minute();
        loop {
            let year = u32::try_from(date.year()).ok()?;
            if year > LAST_YEAR {
                return None;
            }
            if !self.years.contains(year) {
                let next = self.years.next_from(year + 1)?;
                date = NaiveDate::from_ymd_opt(next as i32, 1, 1)?;
                (hour, minute) = (0, 0);
                continue;
            }
            if !self.months.contains(date.month()) {
                date = match self.months.next_from(date.month() + 1) {
                    Some(month) => NaiveDate::from_ymd_opt(date.year(), month, 1)?,
                    None => NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)?,
                };
                (hour, minute) = (0, 0);
                continue;
            }
            if !self.day_matches(date) {
                date = date.succ_opt()?;
                (hour, minute) = (0, 0);
                continue;
            }
            let Some(next_hour) = self.hours.next_from(hour) else {
                date = date.succ_opt()?;
                (hour, minute) = (0, 0);
                continue;
            };
            if next_hour != hour {
                (hour, minute) = (next_hour, 0);
            }
            let Some(next_minute) = self.minutes.next_from(minute) else {
                minute = 0;
                hour += 1;
                if hour > 23 {
                    date = date.succ_opt()?;
                    hour = 0;
                }
                continue;
            };
            return Utc
                .with_ymd_and_hms(date.year(), date.month(), date.day(), hour, next_minute, 0)
                .single();
        }
    }
}

struct Entry {
    spec: ScheduleSpec,
    expr: ScheduleExpr,
    next: Mutex<Option<DateTime<Utc>>>,
}

/// Fires schedules on a virtual clock; see the module documentation.
pub struct Scheduler {
    entries: Vec<Entry>,
    invoker: Arc<dyn Invoke>,
    time_scale: f64,
    region: String,
    real_start: Instant,
    virtual_start: DateTime<Utc>,
}

impl Scheduler {
    /// Parses every expression (an error names the schedule). `time_scale` is virtual
    /// seconds per real second: 1.0 is real time, 60.0 an hour per minute. The region of
    /// the events is `AWS_REGION`/`AWS_DEFAULT_REGION` (else eu-central-1); see
    /// [`Scheduler::with_region`].
    pub fn new(
        specs: Vec<ScheduleSpec>,
        invoker: Arc<dyn Invoke>,
        time_scale: f64,
    ) -> Result<Scheduler, String> {
        if !(time_scale.is_finite() && time_scale > 0.0) {
            return Err(format!(
                "time scale must be a positive number, got {time_scale}"
            ));
        }
        let mut names = HashSet::new();
        let virtual_start = Utc::now();
        let mut entries = Vec::with_capacity(specs.len());
        for spec in specs {
            if !names.insert(spec.name.clone()) {
                return Err(format!("schedule {} is defined twice", spec.name));
            }
            let expr = ScheduleExpr::parse(&spec.expression)
                .map_err(|error| format!("schedule {}: {error}", spec.name))?;
            let next = if spec.enabled {
                expr.next_after(virtual_start)
            } else {
                None
            };
            entries.push(Entry {
                spec,
                expr,
                next: Mutex::new(next),
            });
        }
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .ok()
            .filter(|region| !region.is_empty())
            .unwrap_or_else(|| FALLBACK_REGION.to_owned());
        Ok(Scheduler {
            entries,
            invoker,
            time_scale,
            region,
            real_start: Instant::now(),
            virtual_start,
        })
    }

    /// The region put in the events and rule ARNs.
    pub fn with_region(mut self, region: impl Into<String>) -> Scheduler {
        self.region = region.into();
        self
    }

    /// The virtual clock.
    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = self.real_start.elapsed().as_secs_f64() * self.time_scale;
        let elapsed = chrono::Duration::from_std(Duration::from_secs_f64(elapsed))
            .unwrap_or(chrono::Duration::MAX);
        self.virtual_start
            .checked_add_signed(elapsed)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Real time until the virtual clock shows `at`.
    fn real_until(&self, at: DateTime<Utc>) -> Duration {
        (at - self.now())
            .to_std()
            .map(|left| left.div_f64(self.time_scale))
            .unwrap_or(Duration::ZERO)
    }

    /// Fires the enabled schedules at their times until `shutdown` is cancelled.
    pub fn spawn(self: Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut loops = JoinSet::new();
            for index in 0..self.entries.len() {
                if self.entries[index].spec.enabled {
                    loops.spawn(self.clone().run(index, shutdown.clone()));
                }
            }
            while loops.join_next().await.is_some() {}
        })
    }

    async fn run(self: Arc<Self>, index: usize, shutdown: CancellationToken) {
        let entry = &self.entries[index];
        // A virtual second late per real second of delay is tolerated before runs are
        // skipped instead of replayed.
        let grace = chrono::Duration::from_std(Duration::from_secs_f64(self.time_scale.max(1.0)))
            .unwrap_or(chrono::Duration::MAX);
        loop {
            let next = *entry.next.lock().unwrap_or_else(|e| e.into_inner());
            let Some(at) = next else {
                tracing::info!(schedule = %entry.spec.name, "schedule has no further runs");
                return;
            };
            tokio::select! {
                () = tokio::time::sleep(self.real_until(at)) => {}
                () = shutdown.cancelled() => return,
            }
            let this = self.clone();
            tokio::spawn(async move {
                let _ = this.invoke_entry(index, at, false, None).await;
            });
            let mut following = entry.expr.next_after(at);
            let mut skipped = 0u64;
            let late_limit = self.now() - grace;
            while let Some(time) = following
                && time < late_limit
            {
                following = entry.expr.next_after(time);
                skipped += 1;
            }
            if skipped > 0 {
                tracing::warn!(schedule = %entry.spec.name, skipped, "the clock jumped; missed runs skipped");
            }
            *entry.next.lock().unwrap_or_else(|e| e.into_inner()) = following;
        }
    }

    /// Fires a schedule now (virtual time), whether enabled or not, and waits for the
    /// function. An unknown name is [`InvokeError::UnknownFunction`] with that name.
    pub async fn fire(&self, name: &str) -> Result<Value, InvokeError> {
        self.fire_with_detail(name, None).await
    }

    /// As [`Scheduler::fire`], with `detail` (when given) as the scheduled event's
    /// `detail` instead of `{}` (an operator's manual run with options, e.g.
    /// `{"allHours": true}`). A schedule with a fixed `Input` gets its input unchanged.
    pub async fn fire_with_detail(
        &self,
        name: &str,
        detail: Option<Value>,
    ) -> Result<Value, InvokeError> {
        let index = self
            .entries
            .iter()
            .position(|entry| entry.spec.name == name)
            .ok_or_else(|| InvokeError::UnknownFunction(name.to_owned()))?;
        self.invoke_entry(index, self.now(), true, detail).await
    }

    async fn invoke_entry(
        &self,
        index: usize,
        at: DateTime<Utc>,
        manual: bool,
        detail: Option<Value>,
    ) -> Result<Value, InvokeError> {
        let spec = &self.entries[index].spec;
        let time = at.to_rfc3339_opts(SecondsFormat::Secs, true);
        let event = spec.input.clone().unwrap_or_else(|| {
            let mut event = scheduled_event(&spec.name, &self.region, at);
            if let Some(detail) = detail {
                event["detail"] = detail;
            }
            event
        });
        tracing::info!(
            schedule = %spec.name,
            function = %spec.function,
            scheduled_time = %time,
            manual,
            "schedule fired"
        );
        let result = self.invoker.invoke(&spec.function, event).await;
        match &result {
            Ok(_) => {
                tracing::info!(schedule = %spec.name, function = %spec.function, scheduled_time = %time, outcome = "ok", "schedule run finished")
            }
            Err(error) => {
                tracing::warn!(schedule = %spec.name, function = %spec.function, scheduled_time = %time, error = %error, "schedule run failed")
            }
        }
        result
    }

    /// Every schedule: name, function, expression and next run (virtual time; `None` when
    /// disabled or exhausted).
    pub fn list(&self) -> Vec<(String, String, String, Option<DateTime<Utc>>)> {
        self.entries
            .iter()
            .map(|entry| {
                (
                    entry.spec.name.clone(),
                    entry.spec.function.clone(),
                    entry.spec.expression.clone(),
                    *entry.next.lock().unwrap_or_else(|e| e.into_inner()),
                )
            })
            .collect()
    }
}

/// The EventBridge "Scheduled Event" of rule `rule` at `at`.
pub fn scheduled_event(rule: &str, region: &str, at: DateTime<Utc>) -> Value {
    json!({
        "version": "0",
        "id": uuid::Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "region": region,
        "resources": [format!("arn:aws:events:{region}:{ACCOUNT_ID}:rule/{rule}")],
        "detail": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn cron(expression: &str) -> ScheduleExpr {
        ScheduleExpr::parse(&format!("cron({expression})")).unwrap()
    }

    fn next(expression: &str, after: &str) -> Option<String> {
        cron(expression)
            .next_after(at(after))
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
    }

    #[test]
    fn rates() {
        assert_eq!(
            ScheduleExpr::parse("rate(1 minute)"),
            Ok(ScheduleExpr::Rate(Duration::from_secs(60)))
        );
        assert_eq!(
            ScheduleExpr::parse("rate(5 minutes)"),
            Ok(ScheduleExpr::Rate(Duration::from_secs(300)))
        );
        assert_eq!(
            ScheduleExpr::parse("rate(1 hour)"),
            Ok(ScheduleExpr::Rate(Duration::from_secs(3600)))
        );
        assert_eq!(
            ScheduleExpr::parse(" rate(2 days) "),
            Ok(ScheduleExpr::Rate(Duration::from_secs(2 * 86_400)))
        );
        for bad in [
            "rate(0 minutes)",
            "rate(1 minutes)",
            "rate(5 minute)",
            "rate(2 weeks)",
            "rate(-1 minutes)",
            "rate(minutes)",
            "rate(5)",
            "rate(1.5 hours)",
            "every 5 minutes",
            "at(2024-01-01T00:00:00)",
        ] {
            assert!(ScheduleExpr::parse(bad).is_err(), "{bad}");
        }
        let t = at("2024-01-01T10:00:30Z");
        assert_eq!(
            ScheduleExpr::parse("rate(5 minutes)")
                .unwrap()
                .next_after(t),
            Some(at("2024-01-01T10:05:30Z"))
        );
    }

    #[test]
    fn cron_basics() {
        // Every day at 09:00.
        assert_eq!(
            next("0 9 * * ? *", "2024-03-10T08:59:59Z").as_deref(),
            Some("2024-03-10T09:00:00Z")
        );
        // Strictly after.
        assert_eq!(
            next("0 9 * * ? *", "2024-03-10T09:00:00Z").as_deref(),
            Some("2024-03-11T09:00:00Z")
        );
        // Every 15 minutes.
        assert_eq!(
            next("0/15 * * * ? *", "2024-03-10T10:16:00Z").as_deref(),
            Some("2024-03-10T10:30:00Z")
        );
        assert_eq!(
            next("*/15 * * * ? *", "2024-03-10T23:50:00Z").as_deref(),
            Some("2024-03-11T00:00:00Z")
        );
        // Lists and ranges.
        assert_eq!(
            next("5,35 8-10 * * ? *", "2024-03-10T10:36:00Z").as_deref(),
            Some("2024-03-11T08:05:00Z")
        );
        assert_eq!(
            next("10-50/20 * * * ? *", "2024-03-10T10:31:00Z").as_deref(),
            Some("2024-03-10T10:50:00Z")
        );
    }

    #[test]
    fn cron_weekdays_and_months() {
        // 2024-03-10 is a Sunday. Weekdays at 18:00.
        assert_eq!(
            next("0 18 ? * MON-FRI *", "2024-03-08T18:00:00Z").as_deref(),
            Some("2024-03-11T18:00:00Z")
        );
        // SUN = 1.
        assert_eq!(
            next("0 0 ? * 1 *", "2024-03-08T00:00:00Z").as_deref(),
            Some("2024-03-10T00:00:00Z")
        );
        assert_eq!(
            next("0 0 ? * sat *", "2024-03-08T00:00:00Z").as_deref(),
            Some("2024-03-09T00:00:00Z")
        );
        // Month names, month rollover.
        assert_eq!(
            next("0 12 1 JAN,JUL ? *", "2024-03-10T00:00:00Z").as_deref(),
            Some("2024-07-01T12:00:00Z")
        );
        // Year rollover.
        assert_eq!(
            next("30 23 31 12 ? *", "2024-12-31T23:30:00Z").as_deref(),
            Some("2025-12-31T23:30:00Z")
        );
        assert_eq!(
            next("0 0 1 * ? *", "2024-12-15T00:00:00Z").as_deref(),
            Some("2025-01-01T00:00:00Z")
        );
        // The 31st skips short months.
        assert_eq!(
            next("0 0 31 * ? *", "2024-03-31T00:00:00Z").as_deref(),
            Some("2024-05-31T00:00:00Z")
        );
        // 29 February: leap years only.
        assert_eq!(
            next("0 0 29 2 ? *", "2024-03-01T00:00:00Z").as_deref(),
            Some("2028-02-29T00:00:00Z")
        );
        // Minute rollover into the next day, month and year.
        assert_eq!(
            next("* * * * ? *", "2024-12-31T23:59:10Z").as_deref(),
            Some("2025-01-01T00:00:00Z")
        );
    }

    #[test]
    fn cron_years() {
        assert_eq!(
            next("0 0 1 1 ? 2030", "2024-03-10T00:00:00Z").as_deref(),
            Some("2030-01-01T00:00:00Z")
        );
        assert_eq!(next("0 0 1 1 ? 2020-2022", "2024-03-10T00:00:00Z"), None);
        assert_eq!(next("0 0 30 2 ? *", "2024-03-10T00:00:00Z"), None);
        assert_eq!(next("0 0 1 1 ? *", "2199-06-01T00:00:00Z"), None);
    }

    #[test]
    fn cron_question_mark_rules() {
        for bad in [
            "0 9 * * * *",
            "0 9 ? * ? *",
            "0 9 1 * MON *",
            "? 9 * * ? *",
            "0 ? * * ? *",
            "0 9 * ? ? *",
            "0 9 * * ? ?",
        ] {
            let error = ScheduleExpr::parse(&format!("cron({bad})")).unwrap_err();
            assert!(error.contains('?'), "{bad}: {error}");
        }
        assert!(ScheduleExpr::parse("cron(0 9 ? * * *)").is_ok());
        assert!(ScheduleExpr::parse("cron(0 9 * * ? *)").is_ok());
    }

    #[test]
    fn cron_rejections() {
        for bad in [
            "0 9 * *",
            "0 9 * * ? * *",
            "60 9 * * ? *",
            "0 24 * * ? *",
            "0 9 0 * ? *",
            "0 9 32 * ? *",
            "0 9 * 13 ? *",
            "0 9 ? * 8 *",
            "0 9 ? * 0 *",
            "0 9 * * ? 1969",
            "0 9 * * ? 2200",
            "0 9 * FOO ? *",
            "10-5 9 * * ? *",
            "0/0 9 * * ? *",
            "0,,5 9 * * ? *",
            "abc 9 * * ? *",
        ] {
            assert!(
                ScheduleExpr::parse(&format!("cron({bad})")).is_err(),
                "{bad}"
            );
        }
        for unsupported in [
            "0 9 L * ? *",
            "0 9 15W * ? *",
            "0 9 ? * 6#3 *",
            "0 9 ? * 6L *",
        ] {
            let error = ScheduleExpr::parse(&format!("cron({unsupported})")).unwrap_err();
            assert!(error.contains("not supported"), "{unsupported}: {error}");
        }
    }

    struct Recorder(Mutex<Vec<(String, Value)>>);

    #[async_trait]
    impl Invoke for Recorder {
        async fn invoke(&self, function: &str, payload: Value) -> Result<Value, InvokeError> {
            self.0.lock().unwrap().push((function.to_owned(), payload));
            Ok(json!({ "ok": true }))
        }
    }

    fn spec(name: &str, expression: &str, enabled: bool) -> ScheduleSpec {
        ScheduleSpec {
            name: name.to_owned(),
            function: format!("{name}Function"),
            expression: expression.to_owned(),
            enabled,
            input: None,
        }
    }

    #[test]
    fn scheduler_rejects_bad_definitions_by_name() {
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        let error = Scheduler::new(
            vec![spec("Nightly", "cron(0 2 * * * *)", true)],
            recorder.clone(),
            1.0,
        )
        .err()
        .unwrap();
        assert!(error.contains("Nightly"), "{error}");
        assert!(Scheduler::new(vec![], recorder.clone(), 0.0).is_err());
        assert!(Scheduler::new(vec![], recorder.clone(), f64::NAN).is_err());
        assert!(
            Scheduler::new(
                vec![
                    spec("A", "rate(1 day)", true),
                    spec("A", "rate(2 days)", true)
                ],
                recorder,
                1.0
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn fire_sends_a_scheduled_event_or_the_input() {
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        let mut with_input = spec("Custom", "rate(1 day)", false);
        with_input.input = Some(json!({ "task": "cleanup" }));
        let scheduler = Scheduler::new(
            vec![spec("Nightly", "cron(0 2 * * ? *)", true), with_input],
            recorder.clone(),
            1.0,
        )
        .unwrap()
        .with_region("us-east-2");

        assert_eq!(
            scheduler.fire("Nightly").await.unwrap(),
            json!({ "ok": true })
        );
        scheduler.fire("Custom").await.unwrap();
        scheduler
            .fire_with_detail("Nightly", Some(json!({ "allHours": true })))
            .await
            .unwrap();
        assert_eq!(
            scheduler.fire("Nope").await.unwrap_err(),
            InvokeError::UnknownFunction("Nope".into())
        );

        let calls = recorder.0.lock().unwrap().clone();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[2].1["detail"], json!({ "allHours": true }));
        assert_eq!(calls[2].1["detail-type"], "Scheduled Event");
        let (function, event) = &calls[0];
        assert_eq!(function, "NightlyFunction");
        assert_eq!(event["detail-type"], "Scheduled Event");
        assert_eq!(event["source"], "aws.events");
        assert_eq!(event["account"], "123456789012");
        assert_eq!(event["region"], "us-east-2");
        assert_eq!(event["version"], "0");
        assert_eq!(event["detail"], json!({}));
        assert_eq!(
            event["resources"],
            json!(["arn:aws:events:us-east-2:123456789012:rule/Nightly"])
        );
        assert!(DateTime::parse_from_rfc3339(event["time"].as_str().unwrap()).is_ok());
        assert!(uuid::Uuid::parse_str(event["id"].as_str().unwrap()).is_ok());
        assert_eq!(
            calls[1],
            ("CustomFunction".into(), json!({ "task": "cleanup" }))
        );

        let list = scheduler.list();
        assert_eq!(list[0].0, "Nightly");
        assert_eq!(list[0].1, "NightlyFunction");
        assert_eq!(list[0].2, "cron(0 2 * * ? *)");
        let next = list[0].3.expect("enabled schedules have a next run");
        assert_eq!((next.hour(), next.minute(), next.second()), (2, 0, 0));
        assert_eq!(list[1].3, None, "disabled schedules do not run");
    }

    #[tokio::test]
    async fn the_virtual_clock_runs_rate_schedules_faster() {
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        // A minute per 0.1 s.
        let scheduler = Arc::new(
            Scheduler::new(
                vec![
                    spec("Fast", "rate(1 minute)", true),
                    spec("Off", "rate(1 minute)", false),
                ],
                recorder.clone(),
                600.0,
            )
            .unwrap(),
        );
        let shutdown = CancellationToken::new();
        let task = scheduler.clone().spawn(shutdown.clone());
        tokio::time::sleep(Duration::from_millis(550)).await;
        shutdown.cancel();
        task.await.unwrap();
        let calls = recorder.0.lock().unwrap().clone();
        assert!((3..=6).contains(&calls.len()), "{} runs", calls.len());
        assert!(calls.iter().all(|(function, _)| function == "FastFunction"));
        let times: Vec<DateTime<Utc>> = calls
            .iter()
            .map(|(_, event)| at(event["time"].as_str().unwrap()))
            .collect();
        let mut sorted = times.clone();
        sorted.sort();
        for pair in sorted.windows(2) {
            assert_eq!((pair[1] - pair[0]).num_seconds(), 60);
        }
    }
}
