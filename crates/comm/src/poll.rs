//! Bounded polling, for waits that no channel can wake: NCCL in non-blocking mode reports
//! progress only when asked (`ncclCommGetAsyncError`), and a CUDA event only when queried.

use std::time::{Duration, Instant};

use crate::error::Result;

/// How long to poll with `yield_now` before backing off to short sleeps. Most waits (a decode
/// step's collectives, a stage hand-off) end within it, and a sleep would add its own length to
/// every step; past it the wait is long anyway and a spinning core buys nothing.
const SPIN: Duration = Duration::from_millis(2);
const BACKOFF: Duration = Duration::from_micros(200);

/// Calls `poll` until it returns `Some`, fails, or `deadline` passes (then `Ok(None)`).
pub fn poll_until<T>(deadline: Instant, mut poll: impl FnMut() -> Result<Option<T>>) -> Result<Option<T>> {
    let start = Instant::now();
    loop {
        if let Some(v) = poll()? {
            return Ok(Some(v));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        if now - start < SPIN {
            std::thread::yield_now();
        } else {
            std::thread::sleep(BACKOFF.min(deadline - now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CommError;

    #[test]
    fn returns_the_value_the_error_or_none_at_the_deadline() {
        let mut calls = 0;
        let got = poll_until(Instant::now() + Duration::from_secs(5), || {
            calls += 1;
            Ok((calls == 3).then_some(calls))
        });
        assert_eq!(got.unwrap(), Some(3));

        let failed =
            poll_until::<()>(Instant::now() + Duration::from_secs(5), || Err(CommError::Disconnected { rank: 4 }));
        assert!(matches!(failed, Err(CommError::Disconnected { rank: 4 })));

        let start = Instant::now();
        let timed_out = poll_until::<()>(start + Duration::from_millis(30), || Ok(None)).unwrap();
        assert_eq!(timed_out, None);
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(30) && waited < Duration::from_secs(2), "{waited:?}");
    }
}
