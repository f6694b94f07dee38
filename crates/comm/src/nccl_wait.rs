//! Waiting for an NCCL call with a deadline. NCCL returns as soon as a call is queued on its
//! stream; a rank that never joins leaves the others' kernels spinning forever, so the host polls
//! the stream (and NCCL's asynchronous error) until it is done, failed, or past the deadline.
//! The loop is generic over the poll, so that it is tested here without a GPU.

use std::time::{Duration, Instant};

use crate::World;

/// What one look at an NCCL call in flight found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    Done,
    Pending,
    /// NCCL or CUDA reported an error (its name and message).
    Failed(String),
}

/// Why a call did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("failed: {0}")]
    Failed(String),
    #[error("did not complete within {} s (runtime.timeout_s): a rank is missing, stopped or stuck", .0.as_secs_f64())]
    TimedOut(Duration),
}

/// Longest sleep between two polls: short against a collective's milliseconds, long enough not
/// to spin a core for minutes when a rank is late.
const MAX_SLEEP: Duration = Duration::from_millis(1);

/// Polls until `poll` says done (returning how long it took) or failed, or `timeout` has passed.
/// The first polls spin, then the sleeps between them grow to [`MAX_SLEEP`].
pub fn wait_for(timeout: Duration, mut poll: impl FnMut() -> Poll) -> Result<Duration, WaitError> {
    let start = Instant::now();
    let mut sleep = Duration::from_micros(1);
    loop {
        match poll() {
            Poll::Done => return Ok(start.elapsed()),
            Poll::Failed(why) => return Err(WaitError::Failed(why)),
            Poll::Pending if start.elapsed() > timeout => return Err(WaitError::TimedOut(timeout)),
            Poll::Pending => {
                std::thread::sleep(sleep);
                sleep = (sleep * 2).min(MAX_SLEEP);
            }
        }
    }
}

/// The line a rank prints before it ends the job over an NCCL call: who, which op, what happened.
pub fn failure_message(world: &World, op: &str, what: &str) -> String {
    format!("[rank {}/{}] NCCL {op} {what}; aborting the NCCL communicator and ending the job", world.rank, world.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_completes_returns_after_the_polls_it_needs() {
        let mut polls = 0;
        let waited = wait_for(Duration::from_secs(5), || {
            polls += 1;
            if polls < 4 { Poll::Pending } else { Poll::Done }
        });
        assert!(waited.is_ok(), "{waited:?}");
        assert_eq!(polls, 4);
    }

    #[test]
    fn an_error_ends_the_wait_at_once() {
        let waited = wait_for(Duration::from_secs(5), || Poll::Failed("ncclRemoteError: a peer is gone".into()));
        assert_eq!(waited, Err(WaitError::Failed("ncclRemoteError: a peer is gone".into())));
    }

    #[test]
    fn a_call_that_never_completes_times_out_naming_the_setting() {
        let timeout = Duration::from_millis(30);
        let start = Instant::now();
        let waited = wait_for(timeout, || Poll::Pending);
        assert_eq!(waited, Err(WaitError::TimedOut(timeout)));
        assert!(start.elapsed() >= timeout);
        let message = waited.unwrap_err().to_string();
        assert!(message.contains("within 0.03 s (runtime.timeout_s)"), "{message}");
    }

    #[test]
    fn the_failure_names_rank_and_op() {
        let world = World { rank: 1, size: 4, local_rank: 1, local_size: 4, nodes: 1 };
        let line = failure_message(&world, "reduce_scatter", &WaitError::TimedOut(Duration::from_secs(60)).to_string());
        assert!(line.starts_with("[rank 1/4] NCCL reduce_scatter did not complete within 60 s"), "{line}");
        assert!(line.contains("ending the job"), "{line}");
    }
}
