//! [`TxnRetry`]: the bounded, jittered exponential backoff between attempts of a DynamoDB write
//! that lost a race with another request. Storage-level only: it has nothing to do with a
//! refund's RETRY_WAIT backoff, which paces calls to WeChat.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

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
