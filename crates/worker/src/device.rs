//! Which device a rank runs on. A rank's CUDA ordinal is its local rank among the GPUs this
//! process can see, so the same rule serves every way ranks get started: our launcher and
//! torchrun give each rank the whole node (`CUDA_VISIBLE_DEVICES` unset or listing every GPU:
//! local rank i takes GPU i), while Slurm with `--gpus-per-task=1` or an MPI wrapper pins each
//! task to one GPU (it sees a single device: ordinal 0, whatever its local rank).
//! `--devices 2,3` (`SHARDLINE_DEVICES`) overrides: local rank i takes the i-th listed ordinal.

use candle_core::Device;
use shardline_model::DeviceKind;

use crate::error::{Result, WorkerError};

/// The CUDA ordinal of local rank `local_rank`, given `--devices` (empty: not given) and how
/// many GPUs the process sees.
pub fn cuda_ordinal(local_rank: usize, devices: &[usize], visible: usize) -> Result<usize> {
    let ordinal = match devices {
        [] if visible == 1 => 0,
        [] => local_rank,
        list => *list.get(local_rank).ok_or_else(|| {
            WorkerError::Device(format!("--devices {list:?} names no GPU for local rank {local_rank}"))
        })?,
    };
    if ordinal >= visible {
        return Err(WorkerError::Device(format!(
            "local rank {local_rank} needs CUDA device {ordinal}, but this process sees {visible} GPU(s) \
             (check CUDA_VISIBLE_DEVICES, --devices, and that there are as many GPUs as local ranks)"
        )));
    }
    Ok(ordinal)
}

/// The device local rank `local_rank` runs on.
pub fn device_for(kind: DeviceKind, local_rank: usize, devices: &[usize]) -> Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => {
            // Ask the driver first, so a machine without a GPU or driver gets a plain answer rather
            // than candle's raw `DriverError(CUDA_ERROR_…)` from deep inside device creation.
            let count = cudarc::driver::CudaContext::device_count()
                .map_err(|e| WorkerError::Device(format!("no CUDA driver/GPU found: {e}")))?;
            let ordinal = cuda_ordinal(local_rank, devices, usize::try_from(count).unwrap_or(0))?;
            Ok(Device::new_cuda(ordinal)?)
        }
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => {
            let _ = (local_rank, devices);
            Err(WorkerError::Device("device `cuda` is not available in this build (cuda needs --features cuda)".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_follow_local_rank_pinning_and_the_override() {
        // The whole node visible: local rank i takes GPU i.
        assert_eq!(cuda_ordinal(3, &[], 8).unwrap(), 3);
        // Pinned to one GPU per task (Slurm --gpus-per-task=1): always 0.
        assert_eq!(cuda_ordinal(3, &[], 1).unwrap(), 0);
        // --devices 2,3: local rank 1 takes GPU 3.
        assert_eq!(cuda_ordinal(1, &[2, 3], 4).unwrap(), 3);
        let short = cuda_ordinal(2, &[2, 3], 4).unwrap_err().to_string();
        assert!(short.contains("names no GPU for local rank 2"), "{short}");
        let missing = cuda_ordinal(2, &[], 2).unwrap_err().to_string();
        assert!(missing.contains("sees 2 GPU(s)") && missing.contains("CUDA_VISIBLE_DEVICES"), "{missing}");
        assert!(cuda_ordinal(0, &[], 0).is_err(), "no GPU at all");
    }
}
