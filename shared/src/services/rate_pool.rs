//! A process's share of each bank's per-second initiation budget.
//!
//! The budget itself is an atomic counter per bank and second in the payments table,
//! shared by every worker ([`PaymentStore::take_rate_slots`]), so the cap holds however
//! many Lambda instances run. Within one process, the payments waiting for a slot do not
//! each ask the store: the first of them takes as many slots as there are waiters in one
//! call and hands them out; when the second's budget is spent, they all wait for the next
//! second. Waiting thus costs one store call per second per process, not one per payment
//! and second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;

use crate::domain::BankId;
#[cfg(doc)]
use crate::store::PaymentStore;
use crate::store::StoreError;

/// How many seconds a payment waits for a slot before giving up (well within the
/// worker's 30 s timeout; the item is then re-queued).
pub const MAX_WAIT_SECONDS: u32 = 20;

#[derive(Default)]
pub struct RatePool {
    banks: Mutex<HashMap<BankId, Arc<BankPool>>>,
}

#[derive(Default)]
struct BankPool {
    /// Payments of this process waiting for a slot of this bank.
    waiting: AtomicU32,
    state: tokio::sync::Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    /// The second the slots below belong to.
    second: i64,
    /// Slots taken from the store for `second` and not handed out yet.
    left: u32,
    /// The store had no more for `second`.
    spent: bool,
}

/// Decrements the waiter count however `acquire` ends.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RatePool {
    /// Waits (at most `max_wait` seconds, at most [`MAX_WAIT_SECONDS`]) for one slot of
    /// `bank`'s budget of `limit` initiations per second: `Ok(true)` when one was taken,
    /// `Ok(false)` when the wait ran out. `take(second, want)` takes up to `want` slots of
    /// `second` from the shared counter and answers how many it got
    /// ([`PaymentStore::take_rate_slots`]).
    ///
    /// # Errors
    /// The store failed.
    pub async fn acquire<F, Fut>(
        &self,
        bank: &BankId,
        limit: u32,
        max_wait: u32,
        take: F,
    ) -> Result<bool, StoreError>
    where
        F: Fn(i64, u32) -> Fut,
        Fut: std::future::Future<Output = Result<u32, StoreError>>,
    {
        let pool = Arc::clone(
            self.banks
                .lock()
                .expect("rate pool lock")
                .entry(bank.clone())
                .or_default(),
        );
        pool.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&pool.waiting);
        let last = max_wait.min(MAX_WAIT_SECONDS);
        for attempt in 0..=last {
            let now = Utc::now();
            let second = now.timestamp();
            {
                let mut slots = pool.state.lock().await;
                if slots.second != second {
                    *slots = Slots {
                        second,
                        left: 0,
                        spent: false,
                    };
                }
                if slots.left == 0 && !slots.spent {
                    let want = pool.waiting.load(Ordering::SeqCst).clamp(1, limit);
                    let got = take(second, want).await?;
                    slots.left = got;
                    slots.spent = got < want;
                }
                if slots.left > 0 {
                    slots.left -= 1;
                    return Ok(true);
                }
            }
            if attempt == last {
                break;
            }
            // Sleep to the next second, with a little jitter so processes spread out.
            let rest = 1_000 - u64::from(now.timestamp_subsec_millis().min(999));
            let jitter = rand::random::<u64>() % 50;
            tokio::time::sleep(Duration::from_millis(rest + jitter)).await;
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// The shared counter: slots taken per second, and the calls made to take them.
    #[derive(Default)]
    struct Counter {
        per_second: Mutex<HashMap<i64, u32>>,
        calls: AtomicUsize,
    }

    impl Counter {
        async fn take(&self, second: i64, want: u32, limit: u32) -> Result<u32, StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            let mut map = self.per_second.lock().unwrap();
            let taken = map.entry(second).or_default();
            let got = want.min(limit - *taken);
            *taken += got;
            Ok(got)
        }
    }

    #[tokio::test]
    async fn many_waiters_share_few_store_calls_and_never_exceed_the_limit() {
        let counter = Arc::new(Counter::default());
        let pool = Arc::new(RatePool::default());
        let bank = BankId::parse("lt-alpha").unwrap();
        let started = Utc::now().timestamp();
        let tasks: Vec<_> = (0..25)
            .map(|_| {
                let (counter, pool, bank) = (counter.clone(), pool.clone(), bank.clone());
                tokio::spawn(async move {
                    let take = |second, want| counter.take(second, want, 10);
                    assert!(
                        pool.acquire(&bank, 10, MAX_WAIT_SECONDS, take)
                            .await
                            .unwrap()
                    );
                    Utc::now().timestamp()
                })
            })
            .collect();
        let mut per_second: HashMap<i64, u32> = HashMap::new();
        for t in tasks {
            *per_second.entry(t.await.unwrap()).or_default() += 1;
        }
        assert_eq!(per_second.values().sum::<u32>(), 25);
        assert!(per_second.values().all(|n| *n <= 10), "{per_second:?}");
        let counted: HashMap<i64, u32> = counter.per_second.lock().unwrap().clone();
        assert!(counted.values().all(|n| *n <= 10), "{counted:?}");
        let seconds = (Utc::now().timestamp() - started + 1) as usize;
        // One call per second for the pool (two when a second's first call came up short
        // of the waiters), instead of one per waiter and second.
        let calls = counter.calls.load(Ordering::SeqCst);
        assert!(
            calls <= 2 * seconds + 1,
            "{calls} store calls over {seconds} s"
        );
    }

    #[tokio::test]
    async fn a_spent_budget_answers_false_after_the_wait() {
        let counter = Counter::default();
        let pool = RatePool::default();
        let bank = BankId::parse("lt-alpha").unwrap();
        // Nothing left in any second: the pool gives up after `max_wait` (0: at once).
        let take = |second, want| counter.take(second, want, 0);
        assert!(!pool.acquire(&bank, 1, 0, take).await.unwrap());
    }
}
