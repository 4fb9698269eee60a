//! Structured-output masks that follow their step. The engine computes a step's masks (one
//! llguidance mask per constrained request) while the step's forward pass runs, as vLLM v1
//! computes its grammar bitmask between `execute_model` and `sample_tokens`: the plan only
//! says which requests are masked ([`crate::ScheduledRequest::masked`]), and the masks come
//! through a [`PendingMasks`] the executor reads once the logits are ready, just before it
//! samples. Mask time then hides behind the forward instead of adding to every step.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use crate::plan::RequestId;

/// How long an executor waits for a step's masks once it needs them. Masks take micro- to
/// milliseconds (llguidance bounds the work per token), so reaching this means the engine's
/// mask thread is gone or stuck: the step fails rather than hangs.
pub const MASKS_TIMEOUT: Duration = Duration::from_secs(60);

/// One step's masks: for each masked request of the plan, the tokens its next sample may
/// take, one bit per token id, 32 to a word.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepMasks {
    pub allowed: HashMap<RequestId, Vec<u32>>,
}

/// Why a step's masks never came.
#[derive(Debug, thiserror::Error)]
pub enum MasksError {
    #[error("the step's structured-output masks did not come within {:.1} s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("the step's structured-output masks were never sent (the engine's mask thread ended)")]
    Dropped,
    #[error("the step's structured-output masks have no mask for request {0}")]
    Missing(RequestId),
}

/// The receiving end of one step's masks, handed to [`crate::Executor::submit`] with the plan.
#[derive(Debug)]
pub struct PendingMasks {
    rx: Receiver<StepMasks>,
}

impl PendingMasks {
    /// A sender for the engine's mask thread and the pending masks for the executor.
    pub fn channel() -> (Sender<StepMasks>, PendingMasks) {
        let (tx, rx) = mpsc::channel();
        (tx, PendingMasks { rx })
    }

    /// The masks, if they came already (an executor that wants to know whether it waits); a
    /// sender gone without sending is left for [`PendingMasks::wait`] to report.
    pub fn try_take(&self) -> Option<StepMasks> {
        self.rx.try_recv().ok()
    }

    /// Waits for the masks, at most `timeout`.
    pub fn wait_within(self, timeout: Duration) -> Result<StepMasks, MasksError> {
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => MasksError::Timeout(timeout),
            RecvTimeoutError::Disconnected => MasksError::Dropped,
        })
    }

    /// Waits for the masks, at most [`MASKS_TIMEOUT`].
    pub fn wait(self) -> Result<StepMasks, MasksError> {
        self.wait_within(MASKS_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_come_through_or_the_wait_ends_with_a_reason() {
        let (tx, pending) = PendingMasks::channel();
        assert_eq!(pending.try_take(), None);
        let masks = StepMasks { allowed: HashMap::from([(3, vec![0b101])]) };
        tx.send(masks.clone()).unwrap();
        assert_eq!(pending.wait().unwrap(), masks);

        let (_tx, pending) = PendingMasks::channel();
        let err = pending.wait_within(Duration::from_millis(20)).unwrap_err();
        assert!(matches!(err, MasksError::Timeout(_)) && err.to_string().contains("did not come"), "{err}");

        let (tx, pending) = PendingMasks::channel();
        drop(tx);
        assert!(matches!(pending.wait(), Err(MasksError::Dropped)));
    }
}
