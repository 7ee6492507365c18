//! Crash injection for fault runs (`make chaos`, `tests/tests/chaos.rs`).
//!
//! With `CHAOS_CRASH_RATE` set (a share between 0 and 1) that share of invocations end
//! their process at one of their [`crash_point`]s, the way a Lambda instance dies
//! mid-invocation (out of memory, timeout, host failure): nothing after it runs, no answer
//! is sent, no message is acknowledged. A handler calls [`begin_invocation`] first; it
//! decides whether this invocation crashes, and at which of its first [`CRASH_SPAN`]
//! points (an invocation passing fewer points does not crash). The chance is per
//! invocation, not per point: a poll group of 100 payments passes 200 points and would
//! otherwise almost never get through. The points sit where a crash hurts most: before a
//! bank call, between a bank's answer and the write that records it, and between a write
//! and the acknowledgement of the message that caused it. Without the variable (as
//! deployed: template.yaml never sets it) a point costs one atomic load.
//!
//! `CHAOS_LOG` names a file that gets one line per crash (`point` and process id) before
//! the process exits, so a fault run can say how many crashes it injected.

use std::io::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};

/// An armed invocation crashes at one of its first this many points.
pub const CRASH_SPAN: i64 = 12;

/// Points left before the crash of the current invocation; negative when it will not.
static ARMED: AtomicI64 = AtomicI64::new(-1);

/// Crash probability per point, from `CHAOS_CRASH_RATE` (0 when unset or invalid).
fn rate() -> f64 {
    static RATE: OnceLock<f64> = OnceLock::new();
    *RATE.get_or_init(|| {
        std::env::var("CHAOS_CRASH_RATE")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|r| r.is_finite())
            .map_or(0.0, |r| r.clamp(0.0, 1.0))
    })
}

/// Starts an invocation: with probability `CHAOS_CRASH_RATE` it will crash at one of its
/// next [`CRASH_SPAN`] points (module docs).
pub fn begin_invocation() {
    let rate = rate();
    if rate <= 0.0 {
        return;
    }
    let left = if rand::random::<f64>() < rate {
        rand::random_range(1..=CRASH_SPAN)
    } else {
        -1
    };
    ARMED.store(left, Ordering::SeqCst);
}

/// Ends the process here if the current invocation is armed and this is its point
/// (module docs).
pub fn crash_point(point: &'static str) {
    if rate() <= 0.0 {
        return;
    }
    let left = ARMED.fetch_sub(1, Ordering::SeqCst);
    if left != 1 {
        return;
    }
    if let Some(Ok(mut log)) = std::env::var_os("CHAOS_LOG").map(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    }) {
        let _ = writeln!(log, "{point} {}", std::process::id());
    }
    tracing::warn!(point, "chaos: the process crashes here");
    std::process::exit(70);
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_the_variable_nothing_happens() {
        // The test process has no CHAOS_CRASH_RATE: a point returns.
        assert_eq!(super::rate(), 0.0);
        super::begin_invocation();
        for _ in 0..1000 {
            super::crash_point("test");
        }
    }
}
