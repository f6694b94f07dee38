//! `Collective` over NCCL for burn-cuda tensors (feature `nccl`), through cudarc's raw `nccl`
//! bindings (there is no maintained `nccl-rs`; cudarc loads libnccl at run time).
//!
//! Each call works on the device buffers of Burn's tensors, found with the cubecl client's
//! `get_resource`, and runs on the communicator's own stream, not one of Burn's (cubecl-cuda
//! keeps its compute streams private). It is fenced against Burn's compute at both ends:
//! - before: a device sync, so that the input is written and no kernel still queued uses the
//!   memory the output is given;
//! - after: an event recorded behind the call on NCCL's stream, which the host waits for where
//!   the result is used. Until then the call holds its input and output, so that cubecl's pool
//!   hands neither to another tensor while NCCL reads or writes them.
//!
//! The started gathers and reduce-scatters (`start_*`) return at once: the prefetched gather of
//! the next unit, and the reduce-scatter of the last one's gradients, run on NCCL's stream while
//! Burn computes the current unit. They complete in the order they were started (one stream).
//! The other calls are a start and its wait.
//!
//! Host scalars, barriers and the unique id's broadcast go through the `MpiCollective` it wraps.
//! An NCCL error or a call past its deadline ends the job: the rank names itself and the op,
//! aborts the NCCL communicator (which frees peers stuck in its kernels), then calls MPI_Abort.
//!
//! Status: compiled, never run (no GPU where it was written). `tests/gpu/check.sh` runs it.

use std::cell::RefCell;
use std::ffi::{CStr, c_void};
use std::mem::MaybeUninit;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use burn::tensor::{DType, Int, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::cubecl::future::block_on;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, FloatElement, IntElement};
use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DriverError};
use cudarc::nccl::{result, sys};

use crate::nccl_counts::{NcclCall, NcclOp, WireDtype};
use crate::nccl_id::{ID_MESSAGE_BYTES, nccl_version, unique_id_from_message, unique_id_message};
use crate::nccl_wait::{Poll, failure_message, wait_for};
use crate::{Collective, MpiCollective, Pending, ReduceOp, Traffic, World};

/// The exit code of a job ended over an NCCL call.
const NCCL_FAILURE_EXIT_CODE: i32 = 1;

/// Why a rank could not join an NCCL communicator.
#[derive(Debug, thiserror::Error)]
pub enum NcclSetupError {
    #[error(
        "rank {rank}: libnccl.so cannot be loaded (NCCL's pip wheel ships only libnccl.so.2: link it as libnccl.so and add its folder to LD_LIBRARY_PATH)"
    )]
    NoLibrary { rank: usize },
    #[error("rank {rank}: CUDA device {ordinal}: {source}")]
    Device { rank: usize, ordinal: usize, source: DriverError },
    #[error("rank {rank}: rank 0 could not make the NCCL unique id (ncclGetUniqueId returned NCCL result code {code})")]
    NoUniqueId { rank: usize, code: u32 },
    #[error("rank {rank}: {step} failed: {}", describe(*.code))]
    Nccl { rank: usize, step: &'static str, code: sys::ncclResult_t },
}

/// An NCCL communicator and the stream its calls run on (not one of Burn's).
struct NcclComm {
    raw: sys::ncclComm_t,
    stream: Arc<CudaStream>,
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: `raw` was made by ncclCommInitRank and is not used after this. A failed
        // destroy at the end of a run is not worth more than the run's result.
        let _ = unsafe { result::comm_destroy(self.raw) };
    }
}

pub struct NcclCollective {
    /// The same ranks over MPI, for what is not on the device.
    mpi: MpiCollective,
    channel: Rc<Channel>,
    /// The GPU this rank drives (for communicators made by `split`).
    ordinal: usize,
}

/// What the collective and its calls in flight share.
struct Channel {
    comm: NcclComm,
    world: World,
    /// The longest an NCCL call may take (`runtime.timeout_s`).
    timeout: Duration,
    /// The device collectives' traffic (MPI counts the host scalars), counted as calls complete.
    traffic: RefCell<Traffic>,
}

impl NcclCollective {
    /// Every rank of `mpi` calls this (it is collective): rank 0 makes the unique id, MPI
    /// broadcasts it, and each rank joins on GPU `ordinal` with a stream of its own.
    pub fn new(mpi: MpiCollective, ordinal: usize, timeout: Duration) -> Result<Self, NcclSetupError> {
        let world = *mpi.world();
        let rank = world.rank;
        // SAFETY: only probes whether libnccl loads; cudarc panics on a call into a missing one.
        if !unsafe { sys::is_culib_present() } {
            return Err(NcclSetupError::NoLibrary { rank });
        }
        let device = |source| NcclSetupError::Device { rank, ordinal, source };
        let stream = CudaContext::new(ordinal).and_then(|context| context.new_stream()).map_err(device)?;
        let raw = join(&mpi, rank)?;
        let channel = Channel { comm: NcclComm { raw, stream }, world, timeout, traffic: RefCell::default() };
        Ok(Self { mpi, channel: Rc::new(channel), ordinal })
    }

    /// The NCCL library's version, `major.minor.patch`.
    pub fn version() -> Option<String> {
        // SAFETY: only probes whether libnccl loads before asking it.
        if !unsafe { sys::is_culib_present() } {
            return None;
        }
        result::get_nccl_version().ok().map(nccl_version)
    }

    /// Queues `op` on `input`'s device buffer into a new tensor of the op's output length, on
    /// the communicator's stream, after Burn's queued compute is done.
    fn start(&self, op: NcclOp, input: CubeTensor<CudaRuntime>) -> InFlight<impl Sized + 'static> {
        let channel = &self.channel;
        let input = into_contiguous(input);
        let call = op
            .call(input.meta.shape().num_elements(), input.dtype, channel.world.size)
            .unwrap_or_else(|e| channel.fail(op, &format!("was called wrongly: {e}")));
        let output = empty_device_contiguous_dtype(input.client.clone(), input.device.clone(), [call.received_elems].into(), input.dtype);
        let resource = |tensor: &CubeTensor<CudaRuntime>| {
            tensor.client.get_resource(tensor.handle.clone()).unwrap_or_else(|e| channel.fail(op, &format!("found no device buffer: {e}")))
        };
        let (src, dst) = (resource(&input), resource(&output));
        // The fence: Burn's compute that writes the input, or still uses the memory the output
        // was given, is done.
        // cubecl reports a queued kernel's compile or launch error at this sync: it is not NCCL's.
        block_on(input.client.sync()).unwrap_or_else(|e| {
            channel.fail(
                op,
                &format!("could not sync the device first (not NCCL: a cuda kernel queued before it failed to compile or launch): {e}"),
            )
        });
        let stream = &channel.comm.stream;
        stream.context().bind_to_thread().unwrap_or_else(|e| channel.fail(op, &format!("could not bind the CUDA context: {e}")));
        // SAFETY: both pointers are live device buffers of `call`'s sizes, on the device of the
        // communicator's stream, held by `InFlight` until the call has completed.
        let queued = unsafe { channel.issue(op, &call, src.resource().ptr as *const c_void, dst.resource().ptr as *mut c_void) };
        if let Err(e) = queued {
            channel.fail(op, &format!("failed: {}", describe(e.0)));
        }
        let done = stream.record_event(None).unwrap_or_else(|e| channel.fail(op, &format!("could not record its completion: {e}")));
        InFlight { channel: Rc::clone(channel), op, call, done, held: Some(Held { output, _input: input, _buffers: (src, dst) }) }
    }

    pub fn world(&self) -> &World {
        self.mpi.world()
    }
}

impl Channel {
    /// Queues `op` on the communicator's stream.
    ///
    /// # Safety
    /// `src` and `dst` must be device buffers of `call.sent_elems` and `call.received_elems`.
    unsafe fn issue(
        &self,
        op: NcclOp,
        call: &NcclCall,
        src: *const c_void,
        dst: *mut c_void,
    ) -> Result<result::NcclStatus, result::NcclError> {
        let (dtype, comm, stream) = (nccl_dtype(call.dtype), self.comm.raw, self.comm.stream.cu_stream() as sys::cudaStream_t);
        let sum = sys::ncclRedOp_t::ncclSum;
        // SAFETY: as the caller guarantees; counts are NCCL's (per rank for all_gather's input
        // and reduce_scatter's output), worked out by `NcclCall`.
        unsafe {
            match op {
                NcclOp::AllGather => result::all_gather(src, dst, call.count, dtype, comm, stream),
                NcclOp::ReduceScatter => result::reduce_scatter(src, dst, call.count, dtype, sum, comm, stream),
                NcclOp::AllReduce => result::all_reduce(src, dst, call.count, dtype, sum, comm, stream),
                NcclOp::Broadcast { root } => result::broadcast(src, dst, call.count, dtype, root as i32, comm, stream),
            }
        }
    }

    /// Whether the work recorded in `done` has finished, or NCCL has hit an error.
    fn poll(&self, done: &CudaEvent) -> Poll {
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: a live communicator and a valid out pointer.
        let asked = unsafe { sys::ncclCommGetAsyncError(self.comm.raw, &mut state) };
        for code in [asked, state] {
            if !matches!(code, sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress) {
                return Poll::Failed(describe(code));
            }
        }
        match done.try_is_complete() {
            Ok(true) => Poll::Done,
            Ok(false) => Poll::Pending,
            Err(e) => Poll::Failed(format!("CUDA {e:?}")),
        }
    }

    /// Ends the job over `op`: says which rank and op, aborts the communicator (peers stuck in
    /// its kernels are freed), then MPI_Abort ends every rank.
    fn fail(&self, op: NcclOp, what: &str) -> ! {
        eprintln!("{}", failure_message(&self.world, op.name(), what));
        // SAFETY: a live communicator; nothing uses it after this.
        let _ = unsafe { result::comm_abort(self.comm.raw) };
        MpiCollective::abort_job(NCCL_FAILURE_EXIT_CODE)
    }
}

/// An NCCL call queued on the communicator's stream, and what it holds until it has completed.
struct InFlight<B: 'static> {
    channel: Rc<Channel>,
    op: NcclOp,
    call: NcclCall,
    /// Recorded on the stream right behind the call.
    done: CudaEvent,
    /// None once waited for.
    held: Option<Held<B>>,
}

/// The tensors a call reads and writes, and their device buffers (`get_resource`'s, which keep
/// the allocations out of cubecl's pool).
struct Held<B> {
    output: CubeTensor<CudaRuntime>,
    _input: CubeTensor<CudaRuntime>,
    _buffers: (B, B),
}

impl<B: 'static> InFlight<B> {
    /// Blocks until the call has completed (or ends the job past the deadline, or on an NCCL
    /// error), counts its bytes and returns its output.
    fn wait(mut self) -> CubeTensor<CudaRuntime> {
        self.complete().expect("a call is waited for once")
    }

    fn complete(&mut self) -> Option<CubeTensor<CudaRuntime>> {
        let held = self.held.take()?;
        let channel = &self.channel;
        wait_for(channel.timeout, || channel.poll(&self.done)).unwrap_or_else(|e| channel.fail(self.op, &e.to_string()));
        self.call.record(self.op.counters(&mut channel.traffic.borrow_mut()));
        Some(held.output)
    }
}

impl<B: 'static> Drop for InFlight<B> {
    /// A call dropped unwaited (a run ending on an error mid-step) still completes before its
    /// buffers go back to the pool.
    fn drop(&mut self) {
        self.complete();
    }
}

/// Makes the communicator of `mpi`'s ranks: rank 0's unique id, broadcast over MPI, then
/// ncclCommInitRank (which waits for every rank).
fn join(mpi: &MpiCollective, rank: usize) -> Result<sys::ncclComm_t, NcclSetupError> {
    let world = *mpi.world();
    let mut message = [0u8; ID_MESSAGE_BYTES];
    let made = world.is_main().then(result::get_uniqueid);
    if let Some(made) = &made {
        message = unique_id_message(made.as_ref().map(|id| &id.internal).map_err(|e| e.0 as u32));
    }
    // Broadcast even when it failed, so that no rank waits for an id that will not come.
    mpi.broadcast_bytes(&mut message, 0);
    if let Some(Err(e)) = made {
        return Err(NcclSetupError::Nccl { rank, step: "ncclGetUniqueId", code: e.0 });
    }
    let internal = unique_id_from_message(&message).map_err(|code| NcclSetupError::NoUniqueId { rank, code })?;
    let mut raw = MaybeUninit::uninit();
    // SAFETY: `raw` is written by a successful ncclCommInitRank, and read only then.
    unsafe {
        result::comm_init_rank(raw.as_mut_ptr(), world.size as i32, sys::ncclUniqueId { internal }, rank as i32)
            .map_err(|e| NcclSetupError::Nccl { rank, step: "ncclCommInitRank", code: e.0 })?;
        Ok(raw.assume_init())
    }
}

/// NCCL's name and message for a result code.
fn describe(code: sys::ncclResult_t) -> String {
    // SAFETY: ncclGetErrorString returns a static C string for any code.
    let text = unsafe { CStr::from_ptr(sys::ncclGetErrorString(code)) };
    format!("{code:?} ({})", text.to_string_lossy())
}

/// The NCCL element type of a wire dtype.
pub fn nccl_dtype(dtype: WireDtype) -> sys::ncclDataType_t {
    match dtype {
        WireDtype::F32 => sys::ncclDataType_t::ncclFloat32,
        WireDtype::Bf16 => sys::ncclDataType_t::ncclBfloat16,
        WireDtype::U8 => sys::ncclDataType_t::ncclUint8,
    }
}

type Cube<F, I, BT> = CubeBackend<CudaRuntime, F, I, BT>;

fn cube<F: FloatElement, I: IntElement, BT: BoolElement>(tensor: Tensor<Cube<F, I, BT>, 1>) -> CubeTensor<CudaRuntime> {
    tensor.into_primitive().tensor()
}

fn burn<F: FloatElement, I: IntElement, BT: BoolElement>(tensor: CubeTensor<CudaRuntime>) -> Tensor<Cube<F, I, BT>, 1> {
    Tensor::from_primitive(TensorPrimitive::Float(tensor))
}

fn burn_int<F: FloatElement, I: IntElement, BT: BoolElement>(tensor: CubeTensor<CudaRuntime>) -> Tensor<Cube<F, I, BT>, 1, Int> {
    Tensor::from_primitive(tensor)
}

/// bf16 gathers and reduce-scatters move bf16 on the wire; a bf16 reduce-scatter (reduce dtype
/// bf16) also sums in bf16, in NCCL's ring order, as torch's NCCL process group does. The MPI
/// collective sums in f32; the engine reduces in f32 by default.
impl<F: FloatElement, I: IntElement, BT: BoolElement> Collective<Cube<F, I, BT>> for NcclCollective {
    fn world(&self) -> &World {
        self.mpi.world()
    }

    fn all_gather(&self, shard: Tensor<Cube<F, I, BT>, 1>) -> Tensor<Cube<F, I, BT>, 1> {
        burn(self.start(NcclOp::AllGather, cube(shard)).wait())
    }

    fn start_all_gather(&self, shard: Tensor<Cube<F, I, BT>, 1>) -> Pending<Cube<F, I, BT>> {
        let call = self.start(NcclOp::AllGather, cube(shard));
        Pending::new(move || burn(call.wait()))
    }

    /// NF4 codes move as the bytes they are (ncclUint8).
    fn start_all_gather_bytes(&self, shard: Tensor<Cube<F, I, BT>, 1, Int>) -> Pending<Cube<F, I, BT>, Int> {
        let call = self.start(NcclOp::AllGather, shard.cast(DType::U8).into_primitive());
        Pending::new(move || burn_int(call.wait()))
    }

    fn reduce_scatter(&self, full: Tensor<Cube<F, I, BT>, 1>) -> Tensor<Cube<F, I, BT>, 1> {
        burn(self.start(NcclOp::ReduceScatter, cube(full)).wait())
    }

    fn start_reduce_scatter(&self, full: Tensor<Cube<F, I, BT>, 1>) -> Pending<Cube<F, I, BT>> {
        let call = self.start(NcclOp::ReduceScatter, cube(full));
        Pending::new(move || burn(call.wait()))
    }

    fn all_reduce(&self, tensor: Tensor<Cube<F, I, BT>, 1>) -> Tensor<Cube<F, I, BT>, 1> {
        burn(self.start(NcclOp::AllReduce, cube(tensor)).wait())
    }

    fn broadcast(&self, tensor: Tensor<Cube<F, I, BT>, 1>, root: usize) -> Tensor<Cube<F, I, BT>, 1> {
        burn(self.start(NcclOp::Broadcast { root }, cube(tensor)).wait())
    }

    fn all_reduce_scalars(&self, values: &mut [f64], op: ReduceOp) {
        Collective::<Cube<F, I, BT>>::all_reduce_scalars(&self.mpi, values, op);
    }

    fn barrier(&self) {
        Collective::<Cube<F, I, BT>>::barrier(&self.mpi);
    }

    fn traffic(&self) -> Traffic {
        self.channel.traffic.borrow().plus(&Collective::<Cube<F, I, BT>>::traffic(&self.mpi))
    }

    fn transport(&self) -> &'static str {
        "NCCL"
    }

    /// A new NCCL communicator over the ranks of the MPI split (its own unique id), on the same
    /// GPU. A rank that cannot join ends the job (the others wait in ncclCommInitRank).
    fn split(&self, color: usize) -> Self {
        let mpi = Collective::<Cube<F, I, BT>>::split(&self.mpi, color);
        NcclCollective::new(mpi, self.ordinal, self.channel.timeout).unwrap_or_else(|e| {
            eprintln!("[rank {}/{}] error: split into NCCL groups: {e}", self.world().rank, self.world().size);
            MpiCollective::abort_job(NCCL_FAILURE_EXIT_CODE)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_dtypes_map_to_ncclfloat32_ncclbfloat16_and_nccluint8() {
        assert_eq!(nccl_dtype(WireDtype::F32), sys::ncclDataType_t::ncclFloat32);
        assert_eq!(nccl_dtype(WireDtype::Bf16), sys::ncclDataType_t::ncclBfloat16);
        assert_eq!(nccl_dtype(WireDtype::U8), sys::ncclDataType_t::ncclUint8);
    }
}
