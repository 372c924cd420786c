//! Retry policy for transient database errors: a bounded number of retries with exponential
//! backoff and jitter, each retry logged with its cause.
//!
//! Only errors that say "try again and it may work" are retried: lost or refused connections,
//! `serialization_failure` (40001), `deadlock_detected` (40P01), `lock_not_available` (55P03),
//! server shutdown or start-up (57P01, 57P02, 57P03), `too_many_connections` (53300), and a
//! pool that had no free connection in time. Everything else (constraint violations, syntax,
//! permissions, RLS refusals…) fails at once.
//!
//! **Caller contract:** retry a whole unit of work (a transaction), never a statement inside
//! one. A connection lost during `COMMIT` leaves the outcome unknown: the unit must be
//! idempotent or check whether it already happened (e.g. the ingestion log's status) before
//! doing it again.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio_postgres::error::SqlState;

/// Why an error is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransientCause {
    /// The connection failed, was refused or was closed.
    Connection,
    /// 40001: the transaction lost a serialization conflict.
    SerializationFailure,
    /// 40P01: the transaction was chosen as a deadlock victim.
    Deadlock,
    /// 55P03: a lock could not be taken within `lock_timeout` / `NOWAIT`.
    LockNotAvailable,
    /// 57P01/57P02/57P03: the server is shutting down, crashed, or still starting.
    ServerUnavailable,
    /// 53300: the server has no connection slot free.
    TooManyConnections,
    /// No pooled connection became free within the pool's wait timeout.
    PoolExhausted,
}

impl fmt::Display for TransientCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransientCause::Connection => "connection error",
            TransientCause::SerializationFailure => "serialization failure (40001)",
            TransientCause::Deadlock => "deadlock (40P01)",
            TransientCause::LockNotAvailable => "lock not available (55P03)",
            TransientCause::ServerUnavailable => "server shutting down or starting (57P0x)",
            TransientCause::TooManyConnections => "too many connections (53300)",
            TransientCause::PoolExhausted => "connection pool exhausted",
        })
    }
}

/// The transient cause of a SQLSTATE, if it has one.
pub fn classify_sqlstate(code: &SqlState) -> Option<TransientCause> {
    let c = code.code();
    Some(match c {
        "40001" => TransientCause::SerializationFailure,
        "40P01" => TransientCause::Deadlock,
        "55P03" => TransientCause::LockNotAvailable,
        "57P01" | "57P02" | "57P03" => TransientCause::ServerUnavailable,
        "53300" => TransientCause::TooManyConnections,
        // Class 08: connection exceptions.
        _ if c.starts_with("08") => TransientCause::Connection,
        _ => return None,
    })
}

/// Errors that can say whether retrying might succeed.
pub trait Transient {
    /// `Some(cause)` when the operation may succeed if tried again.
    fn transient_cause(&self) -> Option<TransientCause>;
}

impl Transient for tokio_postgres::Error {
    fn transient_cause(&self) -> Option<TransientCause> {
        if let Some(code) = self.code() {
            return classify_sqlstate(code);
        }
        // No SQLSTATE: a client-side failure. Connection-level ones are closed sockets and
        // I/O errors (refused, reset, timed out); the rest (bad parameters, conversions) are
        // bugs or bad input and must not be retried.
        let io = std::error::Error::source(self).is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
        (self.is_closed() || io).then_some(TransientCause::Connection)
    }
}

impl Transient for deadpool_postgres::PoolError {
    fn transient_cause(&self) -> Option<TransientCause> {
        match self {
            deadpool_postgres::PoolError::Timeout(_) => Some(TransientCause::PoolExhausted),
            deadpool_postgres::PoolError::Backend(e) => e.transient_cause(),
            _ => None,
        }
    }
}

/// How many times and how patiently to retry.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so at most `max_retries + 1` attempts).
    pub max_retries: u32,
    /// Delay before the first retry; doubled for each later one.
    pub initial_backoff: Duration,
    /// Upper bound on one delay.
    pub max_backoff: Duration,
    /// Randomise each delay within `[d/2, d]`, so that two transactions that deadlocked on
    /// each other do not retry in lock step.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// 3 retries after 100 ms, 200 ms, 400 ms (each jittered down to at most half).
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy { max_retries: 0, ..Self::default() }
    }

    /// The un-jittered delay before retry number `retry` (1-based).
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial_backoff.checked_mul(factor).unwrap_or(self.max_backoff).min(self.max_backoff)
    }

    fn jittered(&self, d: Duration) -> Duration {
        if !self.jitter || d.is_zero() {
            return d;
        }
        // Randomness only spreads retries out; std's per-process random hash keys are enough.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(d.as_nanos());
        let half = d / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(h.finish() % nanos.max(1))
    }

    /// Run `op` until it succeeds, fails permanently, or the retries are used up; returns
    /// its last result. `what` names the operation in the logs.
    pub async fn run<T, E, F, Fut>(&self, what: &str, mut op: F) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Transient + fmt::Display,
    {
        let mut attempt = 0u32;
        loop {
            match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let Some(cause) = e.transient_cause() else {
                        return Err(e);
                    };
                    if attempt >= self.max_retries {
                        tracing::warn!(
                            operation = what,
                            attempts = attempt + 1,
                            %cause,
                            error = %e,
                            "giving up after transient database errors"
                        );
                        return Err(e);
                    }
                    attempt += 1;
                    let delay = self.jittered(self.backoff(attempt));
                    tracing::warn!(
                        operation = what,
                        retry = attempt,
                        max_retries = self.max_retries,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        %cause,
                        error = %e,
                        "transient database error; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Debug)]
    struct FakeError(Option<TransientCause>);
    impl fmt::Display for FakeError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "fake {:?}", self.0)
        }
    }
    impl Transient for FakeError {
        fn transient_cause(&self) -> Option<TransientCause> {
            self.0
        }
    }

    fn no_jitter() -> RetryPolicy {
        RetryPolicy { jitter: false, ..RetryPolicy::default() }
    }

    #[test]
    fn sqlstates() {
        let t = |s: &str| classify_sqlstate(&SqlState::from_code(s));
        assert_eq!(t("40001"), Some(TransientCause::SerializationFailure));
        assert_eq!(t("40P01"), Some(TransientCause::Deadlock));
        assert_eq!(t("55P03"), Some(TransientCause::LockNotAvailable));
        assert_eq!(t("57P01"), Some(TransientCause::ServerUnavailable));
        assert_eq!(t("57P03"), Some(TransientCause::ServerUnavailable));
        assert_eq!(t("53300"), Some(TransientCause::TooManyConnections));
        assert_eq!(t("08006"), Some(TransientCause::Connection));
        assert_eq!(t("08001"), Some(TransientCause::Connection));
        // Permanent: unique violation, check violation, RLS refusal, syntax, cancel.
        for code in ["23505", "23514", "42501", "42601", "57014", "22001", "40003"] {
            assert_eq!(t(code), None, "{code} must not be retried");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy { max_backoff: Duration::from_millis(300), ..no_jitter() };
        let d: Vec<u128> = (1..=5).map(|r| p.backoff(r).as_millis()).collect();
        assert_eq!(d, [100, 200, 300, 300, 300]);
        assert_eq!(p.backoff(200), Duration::from_millis(300), "no overflow");
    }

    #[test]
    fn jitter_stays_within_half_to_full() {
        let p = RetryPolicy::default();
        for r in 1..=3 {
            let full = p.backoff(r);
            for _ in 0..50 {
                let j = p.jittered(full);
                assert!(j >= full / 2 && j <= full, "{j:?} outside [{:?}, {full:?}]", full / 2);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_three_times_then_gives_up() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let start = tokio::time::Instant::now();
        let c = calls.clone();
        let r: Result<(), FakeError> = no_jitter()
            .run("test", move |attempt| {
                c.lock().unwrap().push((attempt, start.elapsed().as_millis()));
                async { Err(FakeError(Some(TransientCause::Deadlock))) }
            })
            .await;
        assert!(r.is_err());
        // First attempt, then retries after 100, 200, 400 ms.
        assert_eq!(*calls.lock().unwrap(), [(0, 0), (1, 100), (2, 300), (3, 700)]);
    }

    #[tokio::test(start_paused = true)]
    async fn succeeds_after_a_transient_error() {
        let mut n = 0;
        let r: Result<u32, FakeError> = no_jitter()
            .run("test", |attempt| {
                n += 1;
                async move {
                    if attempt < 2 {
                        Err(FakeError(Some(TransientCause::SerializationFailure)))
                    } else {
                        Ok(attempt)
                    }
                }
            })
            .await;
        assert_eq!(r.unwrap(), 2);
        assert_eq!(n, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let mut n = 0;
        let r: Result<(), FakeError> = RetryPolicy::default()
            .run("test", |_| {
                n += 1;
                async { Err(FakeError(None)) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(n, 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient() {
        // Port 1 on loopback: nothing listens there, the connect is refused.
        let err = tokio_postgres::connect("host=127.0.0.1 port=1 user=x connect_timeout=2", tokio_postgres::NoTls)
            .await
            .err()
            .expect("nothing listens on port 1");
        assert_eq!(err.transient_cause(), Some(TransientCause::Connection), "{err}");
    }
}
