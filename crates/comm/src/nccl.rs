//! NCCL communicators for CUDA ranks, on cudarc's raw bindings and in NCCL's non-blocking mode,
//! so that no NCCL call can hang a rank.
//!
//! Why not cudarc's safe `Comm`: it joins in blocking mode (a join or collective whose peer died
//! waits forever) and cannot be built from a raw communicator.
//!
//! Non-blocking mode in short (NCCL user guide, "Fault tolerance"): the join and every call may
//! return `ncclInProgress`; the communicator is then polled with `ncclCommGetAsyncError` until it
//! leaves that state, before the next NCCL call. The collective itself still runs later, as a
//! kernel on the stream; [`wait_stream`] waits for it by polling a CUDA event and the
//! communicators' async errors. Whatever wait fails or passes its deadline calls `ncclCommAbort`,
//! which ends the communicator and frees its kernels, so the rank fails with an error instead of
//! spinning forever. Every wait also checks that the communicator's peers are still connected on
//! the TCP mesh: a killed peer fails the wait within milliseconds, not at the deadline.
//!
//! Threading: a communicator is used by its rank's step thread only. The lock around the raw
//! handle serialises nothing in practice; it makes a use after `abort` an error instead of a
//! use-after-free.

use std::ffi::{c_int, CStr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nccl::result::{self, NcclError, NcclStatus};
use cudarc::nccl::{sys, NcclType};

use crate::collectives::Group;
use crate::error::{CommError, Result};
use crate::mesh::Comm;
use crate::poll::poll_until;

/// `NCCL_CONFIG_UNDEF_INT`: "NCCL's default" for every integer field of `ncclConfig_t`.
const UNDEF_INT: c_int = c_int::MIN;
/// `NCCL_CONFIG_MAGIC`.
const CONFIG_MAGIC: u32 = 0xcafe_beef;
/// The NCCL version whose `ncclConfig_t` layout cudarc's bindings declare (2.30.0, as
/// `NCCL_VERSION` encodes it). An older library reads the prefix it knows (the struct is
/// versioned by its `size` field).
const CONFIG_VERSION: u32 = 2 * 10000 + 30 * 100;

/// `NCCL_CONFIG_INITIALIZER` with `blocking = 0`.
fn non_blocking_config() -> sys::ncclConfig_t {
    let null = std::ptr::null();
    sys::ncclConfig_t {
        size: std::mem::size_of::<sys::ncclConfig_t>(),
        magic: CONFIG_MAGIC,
        version: CONFIG_VERSION,
        blocking: 0,
        cgaClusterSize: UNDEF_INT,
        minCTAs: UNDEF_INT,
        maxCTAs: UNDEF_INT,
        netName: null,
        splitShare: UNDEF_INT,
        trafficClass: UNDEF_INT,
        commName: null,
        collnetEnable: UNDEF_INT,
        CTAPolicy: UNDEF_INT,
        shrinkShare: UNDEF_INT,
        nvlsCTAs: UNDEF_INT,
        nChannelsPerNetPeer: UNDEF_INT,
        nvlinkCentricSched: UNDEF_INT,
        graphUsageMode: UNDEF_INT,
        numRmaCtx: UNDEF_INT,
        maxP2pPeers: UNDEF_INT,
    }
}

/// A raw communicator handle; NCCL lets any thread use it as long as calls do not overlap.
struct RawComm(sys::ncclComm_t);

// SAFETY: see `RawComm`; `NcclComm` keeps it behind a lock.
unsafe impl Send for RawComm {}

fn describe(code: sys::ncclResult_t) -> String {
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any code.
    let text = unsafe { CStr::from_ptr(sys::ncclGetErrorString(code)) };
    format!("{code:?} ({})", text.to_string_lossy())
}

fn nccl_error(what: &'static str, e: NcclError) -> CommError {
    CommError::Nccl { what, detail: describe(e.0) }
}

fn cuda_error(what: &'static str, e: impl std::fmt::Debug) -> CommError {
    CommError::Nccl { what, detail: format!("CUDA: {e:?}") }
}

/// One NCCL communicator over a group of CUDA ranks, issuing its work on one stream.
pub struct NcclComm {
    /// `None` once aborted.
    raw: Mutex<Option<RawComm>>,
    stream: Arc<CudaStream>,
    tcp: Arc<Comm>,
    /// World ranks of the members, whose TCP connections every wait watches.
    members: Vec<usize>,
    /// This rank's index in the communicator.
    index: usize,
    timeout: Duration,
}

impl NcclComm {
    /// Joins the NCCL communicator of `group` on `stream`. The group's first rank creates the
    /// unique id and broadcasts it over the TCP mesh; every member then joins, within the mesh's
    /// timeout. Call it right after the rendezvous, before loading weights, so no member waits
    /// on another's loading.
    pub fn join(tcp: &Arc<Comm>, group: &Group, stream: Arc<CudaStream>) -> Result<NcclComm> {
        let index = group
            .index_of(tcp.rank())
            .ok_or_else(|| CommError::Protocol(format!("rank {} is not in group {:?}", tcp.rank(), group.ranks())))?;
        let root = group.ranks()[0];
        let mine: Vec<u8> = if index == 0 {
            let id = result::get_uniqueid().map_err(|e| nccl_error("unique id", e))?;
            id.internal.iter().map(|&c| c as u8).collect()
        } else {
            Vec::new()
        };
        let bytes = group.broadcast(tcp, root, &mine)?;
        let mut id = sys::ncclUniqueId { internal: [0; 128] };
        if bytes.len() != id.internal.len() {
            return Err(CommError::Protocol(format!("an NCCL id of {} bytes from rank {root}", bytes.len())));
        }
        for (d, &s) in id.internal.iter_mut().zip(&bytes) {
            *d = s as std::ffi::c_char;
        }
        stream.context().bind_to_thread().map_err(|e| cuda_error("binding the CUDA context", e))?;
        let mut config = non_blocking_config();
        let mut raw: sys::ncclComm_t = std::ptr::null_mut();
        let size = c_int::try_from(group.size()).expect("group size fits an int");
        let rank = c_int::try_from(index).expect("rank fits an int");
        // SAFETY: `raw` and `config` outlive the call; NCCL copies the config.
        let started = unsafe { result::comm_init_rank_config(&mut raw, size, id, rank, &mut config) };
        let comm = NcclComm {
            raw: Mutex::new((!raw.is_null()).then_some(RawComm(raw))),
            stream,
            tcp: Arc::clone(tcp),
            members: group.ranks().to_vec(),
            index,
            timeout: tcp.timeout(),
        };
        comm.accepted("join", started)?;
        Ok(comm)
    }

    /// This rank's index in the communicator.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn lock(&self) -> MutexGuard<'_, Option<RawComm>> {
        self.raw.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ends the communicator at once (its kernels return, its resources go). Later calls fail.
    pub fn abort(&self) {
        if let Some(raw) = self.lock().take() {
            // SAFETY: the handle came from a successful init and is dropped from the lock here,
            // so nothing uses it after this call.
            let _ = unsafe { result::comm_abort(raw.0) };
        }
    }

    /// Fails if NCCL reported an asynchronous error (a network failure, a peer's abort) or a
    /// member's TCP connection ended. `Ok(true)` while NCCL still works on the last call's host
    /// side (`ncclInProgress`).
    fn check(&self) -> Result<bool> {
        let in_progress = {
            let guard = self.lock();
            let raw = guard
                .as_ref()
                .ok_or(CommError::Nccl { what: "call", detail: "the communicator was aborted".into() })?;
            let mut state = sys::ncclResult_t::ncclSuccess;
            // SAFETY: a live handle (under the lock) and a valid out pointer.
            unsafe { sys::ncclCommGetAsyncError(raw.0, &mut state) }.result().map_err(|e| nccl_error("state", e))?;
            match state.result() {
                Ok(NcclStatus::InProgress) => true,
                Ok(_) => false,
                Err(e) => return Err(nccl_error("asynchronous work", e)),
            }
        };
        self.tcp.check_connected(&self.members)?;
        Ok(in_progress)
    }

    /// Finishes one call: waits (bounded) while NCCL reports it in progress; aborts on failure.
    fn accepted(&self, what: &'static str, status: std::result::Result<NcclStatus, NcclError>) -> Result<()> {
        let outcome = match status {
            Ok(NcclStatus::InProgress) => {
                poll_until(Instant::now() + self.timeout, || Ok((!self.check()?).then_some(())))
            }
            Ok(_) => Ok(Some(())),
            Err(e) => Err(nccl_error(what, e)),
        };
        match outcome {
            Ok(Some(())) => Ok(()),
            Ok(None) => {
                self.abort();
                Err(CommError::NcclTimeout { what, timeout: self.timeout })
            }
            Err(e) => {
                self.abort();
                Err(e)
            }
        }
    }

    /// Issues one call with the live handle and this communicator's stream.
    fn call(
        &self,
        what: &'static str,
        f: impl FnOnce(sys::ncclComm_t, sys::cudaStream_t) -> std::result::Result<NcclStatus, NcclError>,
    ) -> Result<()> {
        let status = {
            let guard = self.lock();
            let raw = guard.as_ref().ok_or(CommError::Nccl { what, detail: "the communicator was aborted".into() })?;
            f(raw.0, self.stream.cu_stream() as sys::cudaStream_t)
        };
        self.accepted(what, status)
    }

    /// Sums `buf` over the members, in place, on the stream.
    pub fn all_reduce_sum_in_place<T: NcclType, B: DevicePtrMut<T>>(&self, buf: &mut B) -> Result<()> {
        let count = buf.len();
        let (ptr, _ordered) = buf.device_ptr_mut(&self.stream);
        self.call("all-reduce", |comm, stream| {
            let op = sys::ncclRedOp_t::ncclSum;
            // SAFETY: `ptr` addresses `count` elements of T on this communicator's device.
            unsafe { result::all_reduce(ptr as _, ptr as _, count, T::as_nccl_type(), op, comm, stream) }
        })
    }

    /// Every member's `src`, concatenated in member order into `dst` (size × `src.len()`).
    pub fn all_gather<T: NcclType, S: DevicePtr<T>, R: DevicePtrMut<T>>(&self, src: &S, dst: &mut R) -> Result<()> {
        let count = src.len();
        if dst.len() != count * self.size() {
            return Err(CommError::Protocol(format!(
                "all-gather of {count} values into {} for {} members",
                dst.len(),
                self.size()
            )));
        }
        let (from, _read) = src.device_ptr(&self.stream);
        let (to, _written) = dst.device_ptr_mut(&self.stream);
        self.call("all-gather", |comm, stream| {
            // SAFETY: both pointers live on this device with the sizes checked above.
            unsafe { result::all_gather(from as _, to as _, count, T::as_nccl_type(), comm, stream) }
        })
    }

    /// Sends `buf` to member `peer` (a matching `recv` there).
    pub fn send<T: NcclType, B: DevicePtr<T>>(&self, buf: &B, peer: usize) -> Result<()> {
        let count = buf.len();
        let peer = self.peer_index(peer)?;
        let (ptr, _read) = buf.device_ptr(&self.stream);
        self.call("send", |comm, stream| {
            // SAFETY: `ptr` addresses `count` elements of T on this device.
            unsafe { result::send(ptr as _, count, T::as_nccl_type(), peer, comm, stream) }
        })
    }

    /// Receives `buf.len()` values from member `peer` (a matching `send` there).
    pub fn recv<T: NcclType, B: DevicePtrMut<T>>(&self, buf: &mut B, peer: usize) -> Result<()> {
        let count = buf.len();
        let peer = self.peer_index(peer)?;
        let (ptr, _written) = buf.device_ptr_mut(&self.stream);
        self.call("recv", |comm, stream| {
            // SAFETY: `ptr` addresses `count` writable elements of T on this device.
            unsafe { result::recv(ptr as _, count, T::as_nccl_type(), peer, comm, stream) }
        })
    }

    fn peer_index(&self, peer: usize) -> Result<c_int> {
        if peer >= self.size() || peer == self.index {
            return Err(CommError::Protocol(format!("member {peer} is no peer of member {}", self.index)));
        }
        Ok(c_int::try_from(peer).expect("member index fits an int"))
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // Abort rather than finalize: finalize waits for peers, and a drop must not hang.
        self.abort();
    }
}

/// Waits until everything queued on `stream` so far has run (the step's kernels and the
/// collectives among them), at most `timeout`, while watching `comms` for asynchronous errors and
/// dead peers. On failure or timeout every one of `comms` is aborted, which also frees the
/// stream, and the error says why.
pub fn wait_stream(stream: &CudaStream, comms: &[&NcclComm], timeout: Duration) -> Result<()> {
    let event = stream.record_event(None).map_err(|e| cuda_error("recording an event", e))?;
    let outcome = poll_until(Instant::now() + timeout, || {
        for c in comms {
            c.check()?;
        }
        match event.try_is_complete() {
            Ok(done) => Ok(done.then_some(())),
            Err(e) => Err(cuda_error("the step's GPU work", e)),
        }
    });
    let failed = match outcome {
        Ok(Some(())) => return Ok(()),
        Ok(None) => CommError::NcclTimeout { what: "step", timeout },
        Err(e) => e,
    };
    for c in comms {
        c.abort();
    }
    Err(failed)
}
