//! [`TxnRetry`]: the bounded, jittered exponential backoff between attempts of a DynamoDB write
//! that lost a race with another request or was throttled, and [`cancellation`], which tells
//! from a `TransactionCanceledException`'s reasons whether another attempt can succeed.
//! Storage-level only: it has nothing to do with a refund's RETRY_WAIT backoff, which paces calls
//! to WeChat.
//!
//! The SDK's own retries do not cover transactions: its classifier retries throttling by error
//! code (`ThrottlingException`, `ProvisionedThroughputExceededException`, ...), and a transaction
//! throttled on one of its items comes back as `TransactionCanceledException` with the throttling
//! only in the item's cancellation reason.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use aws_sdk_dynamodb::types::CancellationReason;

/// How often a write that collided with another one is tried.
pub(super) const TXN_ATTEMPTS: u32 = 10;

/// The attempts of one logical write: call [`TxnRetry::pause`] after each failed one.
#[derive(Debug, Default)]
pub(super) struct TxnRetry {
    attempt: u32,
}

impl TxnRetry {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Sleeps before the next attempt; `false` (without sleeping) once [`TXN_ATTEMPTS`] attempts
    /// have been made.
    pub(super) async fn pause(&mut self) -> bool {
        match self.next_delay() {
            Some(d) => {
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }

    /// The wait before the next attempt, or `None` when the attempts are spent.
    fn next_delay(&mut self) -> Option<Duration> {
        let attempt = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        (self.attempt < TXN_ATTEMPTS).then(|| delay(attempt, jitter()))
    }
}

/// What a cancelled transaction's reasons mean for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cancellation {
    /// A condition failed: a business answer, from the item the condition saw.
    ConditionFailed,
    /// Only other transactions were in the way: try again.
    Conflict,
    /// DynamoDB shed load on at least one item (and nothing worse happened): try again.
    Throttled,
    /// Anything else (validation, item too large, ...): another attempt fails the same way.
    Permanent,
}

/// A reason's code; DynamoDB sends `None` for the items that were fine.
pub(super) fn code(r: &CancellationReason) -> &str {
    r.code().unwrap_or("None")
}

pub(super) fn cancellation(reasons: &[CancellationReason]) -> Cancellation {
    let codes = || reasons.iter().map(code);
    if codes().any(|c| c == "ConditionalCheckFailed") {
        return Cancellation::ConditionFailed;
    }
    let throttled = |c: &str| matches!(c, "ThrottlingError" | "ProvisionedThroughputExceeded");
    if !codes().all(|c| matches!(c, "None" | "TransactionConflict") || throttled(c)) {
        return Cancellation::Permanent;
    }
    if codes().any(throttled) {
        Cancellation::Throttled
    } else {
        Cancellation::Conflict
    }
}

/// 5 ms doubling per attempt, capped at 200 ms, plus up to as much again of jitter so that the
/// writers that collided do not collide again.
fn delay(attempt: u32, jitter: u64) -> Duration {
    let base = 5u64 << attempt.min(6);
    Duration::from_millis(base.min(200) + jitter % (base + 1))
}

/// A random number without a RNG dependency: std seeds every `RandomState` afresh.
fn jitter() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_then_cap_and_jitter_stays_within_the_base() {
        assert_eq!(delay(0, 0), Duration::from_millis(5));
        assert_eq!(delay(1, 0), Duration::from_millis(10));
        assert_eq!(delay(5, 0), Duration::from_millis(160));
        assert_eq!(delay(9, 0), Duration::from_millis(200));
        assert_eq!(delay(0, 5), Duration::from_millis(10));
        assert_eq!(delay(0, 6), Duration::from_millis(5));
        assert_eq!(
            delay(9, u64::MAX),
            Duration::from_millis(200 + u64::MAX % 321)
        );
    }

    fn reasons(codes: &[&str]) -> Vec<CancellationReason> {
        codes
            .iter()
            .map(|c| CancellationReason::builder().code(*c).build())
            .collect()
    }

    #[test]
    fn cancellations_are_classified_by_their_worst_reason() {
        use Cancellation::*;
        for (codes, want) in [
            (&["ConditionalCheckFailed", "None"][..], ConditionFailed),
            (
                &["ThrottlingError", "ConditionalCheckFailed"],
                ConditionFailed,
            ),
            (&["TransactionConflict", "None"], Conflict),
            (&["None", "TransactionConflict"], Conflict),
            (&["ThrottlingError", "None"], Throttled),
            (
                &["TransactionConflict", "ProvisionedThroughputExceeded"],
                Throttled,
            ),
            (&["ValidationError", "None"], Permanent),
            (
                &["ThrottlingError", "ItemCollectionSizeLimitExceeded"],
                Permanent,
            ),
        ] {
            assert_eq!(cancellation(&reasons(codes)), want, "{codes:?}");
        }
        // A reason without a code is DynamoDB's "None".
        let bare = [CancellationReason::builder().build()];
        assert_eq!(cancellation(&bare), Conflict);
    }

    #[test]
    fn a_write_gets_exactly_txn_attempts_tries() {
        // GIVEN a fresh retry WHEN every attempt fails THEN it allows TXN_ATTEMPTS attempts, and
        // waits at most a few seconds in all
        let mut retry = TxnRetry::new();
        let mut attempts = 1;
        let mut waited = Duration::ZERO;
        while let Some(d) = retry.next_delay() {
            attempts += 1;
            waited += d;
        }
        assert_eq!(attempts, TXN_ATTEMPTS);
        assert!(waited <= Duration::from_secs(3), "{waited:?}");
        assert_eq!(retry.next_delay(), None);
    }
}
