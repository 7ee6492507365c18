//! The rate-source port: where services get today's [`RateTable`] from.
//!
//! * [`RateSource`]: the port. Services hold an `Arc<dyn RateSource>`.
//! * [`ecb::EcbRateSource`]: the ECB daily reference rates over HTTP, cached (the adapter
//!   to use in functions; configured from the environment, see [`ecb::EcbConfig`]).
//! * [`CachedRateSource`]: the in-process cache in front of any source (TTL, one fetch
//!   for concurrent callers, stale rates on failure). The ECB adapter is one of these.
//! * [`StaticRateSource`]: a fixed table (or a fixed error), for tests of other services.
//!
//! The rates change once per working day, so a Lambda instance fetches them at most once
//! per TTL and keeps them in memory; nothing is stored in DynamoDB. See docs/fx.md.

pub mod ecb;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{FxError, RateTable};
use crate::services::{Clock, SystemClock};

/// Where reference rates come from.
#[async_trait]
pub trait RateSource: Send + Sync {
    /// The latest rate table available. Its [`RateTable::as_of`] says which day the
    /// rates are for; callers should show it next to converted amounts.
    ///
    /// # Errors
    /// [`FxError::Feed`], [`FxError::Unavailable`] or [`FxError::Config`] when no usable
    /// table can be had.
    async fn latest(&self) -> Result<RateTable, FxError>;
}

/// A fixed answer: a table, or an error. For tests of services that convert money.
#[derive(Clone, Debug)]
pub struct StaticRateSource {
    answer: Result<RateTable, FxError>,
}

impl StaticRateSource {
    /// Always answers `table`.
    #[must_use]
    pub fn new(table: RateTable) -> Self {
        Self { answer: Ok(table) }
    }

    /// Always fails with `error` (e.g. to test how a service reports missing rates).
    #[must_use]
    pub fn failing(error: FxError) -> Self {
        Self { answer: Err(error) }
    }
}

#[async_trait]
impl RateSource for StaticRateSource {
    async fn latest(&self) -> Result<RateTable, FxError> {
        self.answer.clone()
    }
}

/// How long [`CachedRateSource`] keeps and trusts a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    /// A table fetched less than this long ago is served without asking the source.
    pub ttl: Duration,
    /// Rates older than this many calendar days (today − `as_of`, UTC) are never served:
    /// neither from the cache after a failed fetch nor fresh from the source (a feed that
    /// stopped updating is a failure).
    pub max_age_days: u32,
    /// After a failed fetch, the source is not asked again for this long: callers get the
    /// cached table (or the same error) instead of each waiting for a timeout.
    pub retry_after: Duration,
}

/// One hour: the ECB publishes once per working day (around 16:00 CET), so an hour keeps
/// the lag after publication short and the fetches to ~24 a day per Lambda instance.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60 * 60);

/// Five days: the longest gap between two ECB publications is Easter (no rates on Good
/// Friday and Easter Monday), when Thursday's rates are the latest until Tuesday 16:00 CET.
pub const DEFAULT_MAX_AGE_DAYS: u32 = 5;

/// One minute between attempts while the source fails.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            max_age_days: DEFAULT_MAX_AGE_DAYS,
            retry_after: DEFAULT_RETRY_AFTER,
        }
    }
}

#[derive(Default)]
struct CacheState {
    /// The last good table and when it was fetched.
    table: Option<(RateTable, DateTime<Utc>)>,
    /// The last failed fetch, cleared by a good one.
    failure: Option<(FxError, DateTime<Utc>)>,
}

/// An in-process cache in front of a [`RateSource`].
///
/// * A table younger than [`CachePolicy::ttl`] is served from memory.
/// * Concurrent callers share one fetch: the refresh is guarded by an async mutex, and
///   whoever waited for it re-reads the cache instead of fetching again. While a refresh
///   is running, callers that have a usable cached table get it right away.
/// * When a fetch fails, the cached table is served as long as its rates are at most
///   [`CachePolicy::max_age_days`] old (logged as a warning; `as_of` tells callers the
///   date); with nothing usable cached, the error is returned. The source is not asked
///   again before [`CachePolicy::retry_after`].
pub struct CachedRateSource<S> {
    source: S,
    policy: CachePolicy,
    clock: Arc<dyn Clock>,
    state: Mutex<CacheState>,
    refresh: tokio::sync::Mutex<()>,
}

impl<S> std::fmt::Debug for CachedRateSource<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedRateSource")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S: RateSource> CachedRateSource<S> {
    /// A cache with the real clock.
    pub fn new(source: S, policy: CachePolicy) -> Self {
        Self::with_clock(source, policy, Arc::new(SystemClock))
    }

    /// A cache with the given clock (tests).
    pub fn with_clock(source: S, policy: CachePolicy, clock: Arc<dyn Clock>) -> Self {
        Self {
            source,
            policy,
            clock,
            state: Mutex::new(CacheState::default()),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> CachePolicy {
        self.policy
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // The state is replaced as a whole while locked, so a poisoned lock still holds a
        // consistent value.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_fresh(&self, fetched_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        now.signed_duration_since(fetched_at)
            .to_std()
            .is_ok_and(|age| age < self.policy.ttl)
            // A clock that went backwards: treat the table as just fetched.
            || fetched_at > now
    }

    /// Whether rates of `table` are recent enough to be served at all.
    fn is_recent(&self, table: &RateTable, now: DateTime<Utc>) -> bool {
        let age_days = now
            .date_naive()
            .signed_duration_since(table.as_of())
            .num_days();
        age_days <= i64::from(self.policy.max_age_days)
    }

    fn fresh(&self, now: DateTime<Utc>) -> Option<RateTable> {
        let state = self.lock();
        let (table, fetched_at) = state.table.as_ref()?;
        self.is_fresh(*fetched_at, now).then(|| table.clone())
    }

    fn usable(&self, now: DateTime<Utc>) -> Option<RateTable> {
        let state = self.lock();
        let (table, _) = state.table.as_ref()?;
        self.is_recent(table, now).then(|| table.clone())
    }

    /// The answer after a failed fetch: the cached table if still recent, else `error`.
    fn fallback(&self, now: DateTime<Utc>, error: FxError) -> Result<RateTable, FxError> {
        match self.usable(now) {
            Some(table) => {
                tracing::warn!(
                    error = %error,
                    as_of = %table.as_of(),
                    "exchange rates could not be refreshed; serving the cached table"
                );
                Ok(table)
            }
            None => Err(error),
        }
    }

    async fn refresh_now(&self) -> Result<RateTable, FxError> {
        let now = self.clock.now();
        // Someone else refreshed, or failed, while we waited for the guard.
        if let Some(table) = self.fresh(now) {
            return Ok(table);
        }
        let recent_failure = {
            let state = self.lock();
            state.failure.as_ref().and_then(|(error, failed_at)| {
                let since = now.signed_duration_since(*failed_at).to_std().ok()?;
                (since < self.policy.retry_after).then(|| error.clone())
            })
        };
        if let Some(error) = recent_failure {
            return self.fallback(now, error);
        }

        let fetched = self.source.latest().await.and_then(|table| {
            if self.is_recent(&table, now) {
                Ok(table)
            } else {
                Err(FxError::Feed(format!(
                    "the latest rates are for {}, more than {} days ago",
                    table.as_of(),
                    self.policy.max_age_days
                )))
            }
        });
        let now = self.clock.now();
        match fetched {
            Ok(table) => {
                tracing::info!(
                    as_of = %table.as_of(),
                    currencies = table.currencies().count(),
                    "exchange rates refreshed"
                );
                let mut state = self.lock();
                state.table = Some((table.clone(), now));
                state.failure = None;
                Ok(table)
            }
            Err(error) => {
                self.lock().failure = Some((error.clone(), now));
                let result = self.fallback(now, error);
                if let Err(error) = &result {
                    tracing::warn!(error = %error, "exchange rates unavailable and none cached");
                }
                result
            }
        }
    }
}

#[async_trait]
impl<S: RateSource> RateSource for CachedRateSource<S> {
    async fn latest(&self) -> Result<RateTable, FxError> {
        let now = self.clock.now();
        if let Some(table) = self.fresh(now) {
            return Ok(table);
        }
        let _guard = match self.refresh.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // A refresh is running: serve what we have rather than wait for it.
                if let Some(table) = self.usable(now) {
                    return Ok(table);
                }
                self.refresh.lock().await
            }
        };
        self.refresh_now().await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::{NaiveDate, TimeZone};
    use rust_decimal::Decimal;

    use super::*;
    use crate::domain::Currency;

    struct TestClock(Mutex<DateTime<Utc>>);

    impl TestClock {
        fn at(y: i32, m: u32, d: u32, h: u32) -> Arc<Self> {
            Arc::new(Self(Mutex::new(
                Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap(),
            )))
        }

        fn advance(&self, by: Duration) {
            let mut now = self.0.lock().unwrap();
            *now += chrono::Duration::from_std(by).unwrap();
        }
    }

    impl Clock for TestClock {
        fn now(&self) -> DateTime<Utc> {
            *self.0.lock().unwrap()
        }
    }

    /// Answers from a script (the last answer repeats), counting calls; each call takes
    /// `delay` so that concurrent callers really overlap.
    struct Scripted {
        answers: Mutex<VecDeque<Result<RateTable, FxError>>>,
        calls: Arc<AtomicUsize>,
        delay: Duration,
    }

    impl Scripted {
        fn new(answers: Vec<Result<RateTable, FxError>>) -> (Self, Arc<AtomicUsize>) {
            let calls = Arc::new(AtomicUsize::new(0));
            let source = Self {
                answers: Mutex::new(answers.into()),
                calls: calls.clone(),
                delay: Duration::from_millis(20),
            };
            (source, calls)
        }
    }

    #[async_trait]
    impl RateSource for Scripted {
        async fn latest(&self) -> Result<RateTable, FxError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let mut answers = self.answers.lock().unwrap();
            if answers.len() > 1 {
                answers.pop_front().unwrap()
            } else {
                answers.front().cloned().expect("a scripted answer")
            }
        }
    }

    fn table(y: i32, m: u32, d: u32, usd: &str) -> RateTable {
        RateTable::new(
            NaiveDate::from_ymd_opt(y, m, d).unwrap(),
            [(Currency::USD, Decimal::from_str_exact(usd).unwrap())],
        )
        .unwrap()
    }

    fn down() -> FxError {
        FxError::Unavailable("connection refused".into())
    }

    fn policy() -> CachePolicy {
        CachePolicy {
            ttl: Duration::from_secs(3600),
            max_age_days: 4,
            retry_after: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn serves_from_memory_within_the_ttl_and_refetches_after() {
        let clock = TestClock::at(2025, 3, 14, 17);
        let (source, calls) = Scripted::new(vec![
            Ok(table(2025, 3, 14, "1.08")),
            Ok(table(2025, 3, 14, "1.09")),
        ]);
        let cache = CachedRateSource::with_clock(source, policy(), clock.clone());

        let first = cache.latest().await.unwrap();
        clock.advance(Duration::from_secs(3599));
        assert_eq!(cache.latest().await.unwrap(), first);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        clock.advance(Duration::from_secs(1));
        let second = cache.latest().await.unwrap();
        assert_eq!(second.rate(Currency::USD), Some(Decimal::new(109, 2)));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_callers_on_a_cold_cache_cause_one_fetch() {
        let clock = TestClock::at(2025, 3, 14, 17);
        let (source, calls) = Scripted::new(vec![Ok(table(2025, 3, 14, "1.08"))]);
        let cache = Arc::new(CachedRateSource::with_clock(source, policy(), clock));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.latest().await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), table(2025, 3, 14, "1.08"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_failed_fetch_too() {
        let clock = TestClock::at(2025, 3, 14, 17);
        let (source, calls) = Scripted::new(vec![Err(down())]);
        let cache = Arc::new(CachedRateSource::with_clock(
            source,
            policy(),
            clock.clone(),
        ));
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.latest().await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Err(down()));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // After `retry_after` the source is asked again.
        clock.advance(Duration::from_secs(60));
        assert_eq!(cache.latest().await, Err(down()));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_refresh_serves_the_cached_table_while_it_is_recent() {
        // Fetched on Friday evening; the feed is down over the weekend.
        let clock = TestClock::at(2025, 3, 14, 17);
        let (source, calls) = Scripted::new(vec![Ok(table(2025, 3, 14, "1.08")), Err(down())]);
        let cache = CachedRateSource::with_clock(source, policy(), clock.clone());
        let friday = cache.latest().await.unwrap();

        clock.advance(Duration::from_secs(2 * 24 * 3600)); // Sunday
        assert_eq!(cache.latest().await.unwrap(), friday);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Within `retry_after` nobody asks the source again.
        assert_eq!(cache.latest().await.unwrap(), friday);
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // Tuesday 17:00: 4 days old, still served; Wednesday: too old, the error shows.
        clock.advance(Duration::from_secs(2 * 24 * 3600));
        assert_eq!(cache.latest().await.unwrap(), friday);
        clock.advance(Duration::from_secs(24 * 3600));
        assert_eq!(cache.latest().await, Err(down()));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_good_fetch_after_failures_replaces_the_table_and_clears_the_failure() {
        let clock = TestClock::at(2025, 3, 14, 17);
        let (source, calls) = Scripted::new(vec![
            Err(down()),
            Ok(table(2025, 3, 14, "1.08")),
            Ok(table(2025, 3, 17, "1.07")),
        ]);
        let cache = CachedRateSource::with_clock(source, policy(), clock.clone());
        assert_eq!(cache.latest().await, Err(down()));
        clock.advance(Duration::from_secs(61));
        assert_eq!(cache.latest().await.unwrap(), table(2025, 3, 14, "1.08"));
        clock.advance(Duration::from_secs(3600));
        assert_eq!(cache.latest().await.unwrap(), table(2025, 3, 17, "1.07"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn rates_older_than_the_limit_are_rejected_even_when_fresh_from_the_source() {
        let clock = TestClock::at(2025, 3, 20, 17);
        let (source, _) = Scripted::new(vec![Ok(table(2025, 3, 14, "1.08"))]);
        let cache = CachedRateSource::with_clock(source, policy(), clock);
        let error = cache.latest().await.unwrap_err();
        assert_eq!(
            error,
            FxError::Feed("the latest rates are for 2025-03-14, more than 4 days ago".into())
        );
    }

    #[tokio::test]
    async fn callers_get_the_cached_table_while_a_refresh_is_running() {
        let clock = TestClock::at(2025, 3, 14, 17);
        let (mut source, calls) = Scripted::new(vec![
            Ok(table(2025, 3, 14, "1.08")),
            Ok(table(2025, 3, 14, "1.09")),
        ]);
        source.delay = Duration::from_millis(300);
        let cache = Arc::new(CachedRateSource::with_clock(
            source,
            policy(),
            clock.clone(),
        ));
        cache.latest().await.unwrap();
        clock.advance(Duration::from_secs(3600));

        let refreshing = tokio::spawn({
            let cache = cache.clone();
            async move { cache.latest().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let meanwhile = cache.latest().await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(200));
        assert_eq!(meanwhile, table(2025, 3, 14, "1.08"));
        assert_eq!(
            refreshing.await.unwrap().unwrap(),
            table(2025, 3, 14, "1.09")
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn static_source_answers_what_it_was_given() {
        let table = table(2025, 3, 14, "1.08");
        assert_eq!(
            StaticRateSource::new(table.clone()).latest().await,
            Ok(table)
        );
        assert_eq!(
            StaticRateSource::failing(down()).latest().await,
            Err(down())
        );
    }
}
