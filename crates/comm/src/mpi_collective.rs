//! `Collective` over MPI (OpenMPI). Tensors go to the host, through MPI as raw bytes (f32 or
//! bf16), and back.
//!
//! Reduce-scatter is an all-to-all followed by a local sum in rank order, in f32 whatever the
//! dtype moved: on OpenMPI 4.1 this ran 4-7x faster than `MPI_Reduce_scatter_block` (see
//! docs/design.md), its order of summation is fixed, and bf16 needs no user-defined MPI operation.
//!
//! Started gathers and reduce-scatters run on a thread of their own, on a duplicate of the
//! world communicator (MPI requires every rank to issue the collectives of one communicator in
//! the same order; one thread per communicator, taking them in the order they were started,
//! guarantees it), so that they progress while the main thread computes. That needs
//! MPI_THREAD_MULTIPLE; without it they run at once.

use std::cell::RefCell;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use burn::tensor::{BasicOps, DType, Int, Tensor, TensorData, backend::Backend};
use half::bf16;
use mpi::Threading;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Color, Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::host_buffer::HostBuffer;
use crate::{Collective, Pending, ReduceOp, Traffic, World};

/// MPI itself: initialised when made, finalized when dropped. Keep it alive (and out of the
/// engine) until the end of `main`: finalizing is collective, so a rank that fails must abort
/// the job instead of dropping it, or it would wait for the others forever.
pub struct MpiSession {
    universe: Universe,
    threading: Threading,
}

impl MpiSession {
    /// Initialises MPI (once per process; a process started without mpirun is a job of one),
    /// asking for MPI_THREAD_MULTIPLE so that gathers can be prefetched.
    ///
    /// A rank waiting in a collective yields its core (OpenMPI's `mpi_yield_when_idle`, unless
    /// `OMPI_MCA_mpi_yield_when_idle` says otherwise): with the communication thread, a rank has more
    /// threads than the cores it was given, and busy polling took the core from the thread
    /// that computes. OpenMPI turns it on itself only on nodes it knows to be oversubscribed.
    pub fn init() -> Option<Self> {
        const YIELD: &str = "OMPI_MCA_mpi_yield_when_idle";
        if std::env::var_os(YIELD).is_none() {
            // SAFETY: called before MPI or any thread of ours reads the environment.
            unsafe { std::env::set_var(YIELD, "1") };
        }
        let (universe, threading) = mpi::initialize_with_threading(Threading::Multiple)?;
        Some(Self { universe, threading })
    }

    /// The collective over all ranks of the job, knowing which ranks share this node.
    pub fn collective(&self) -> MpiCollective {
        MpiCollective::new(self.universe.world(), self.threading == Threading::Multiple)
    }
}

pub struct MpiCollective {
    comm: SimpleCommunicator,
    world: World,
    traffic: RefCell<Traffic>,
    threads_allowed: bool,
    /// Where started gathers and reduce-scatters run; `None` without MPI_THREAD_MULTIPLE.
    comm_thread: Option<CommThread>,
}

impl MpiCollective {
    fn new(comm: SimpleCommunicator, threads_allowed: bool) -> Self {
        let rank = comm.rank() as usize;
        let size = comm.size() as usize;
        let local = comm.split_shared(rank as i32);
        let (local_rank, local_size) = (local.rank() as usize, local.size() as usize);
        let mut nodes = 0u64;
        comm.all_reduce_into(&u64::from(local_rank == 0), &mut nodes, SystemOperation::sum());
        let world = World { rank, size, local_rank, local_size, nodes: nodes as usize };
        let comm_thread = (threads_allowed && size > 1).then(|| CommThread::spawn(comm.duplicate()));
        Self { comm, world, traffic: RefCell::new(Traffic::default()), threads_allowed, comm_thread }
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    /// `root`'s bytes into `bytes` on every rank (set-up messages such as NCCL's unique id).
    pub fn broadcast_bytes(&self, bytes: &mut [u8], root: usize) {
        self.comm.process_at_rank(root as i32).broadcast_into(bytes);
    }

    /// Ends every rank of the job now (used after an error or panic, so that no rank is left
    /// waiting in a collective).
    pub fn abort_job(code: i32) -> ! {
        // SAFETY: MPI_Abort may be called at any point after MPI_Init; it does not return.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
        }
        std::process::exit(code)
    }
}

/// A tensor's values on the host, f32 or bf16 (or u8 for gathers of bytes), as MPI moves them.
fn host_data<B: Backend, K: BasicOps<B>>(tensor: Tensor<B, 1, K>) -> TensorData {
    let data = tensor.into_data();
    assert!(
        matches!(data.dtype, DType::F32 | DType::BF16 | DType::U8),
        "the MPI collective moves f32, bf16 or u8 tensors, not {:?}",
        data.dtype
    );
    data
}

fn device_tensor<B: Backend, K: BasicOps<B>>(buffer: HostBuffer, device: &B::Device) -> Tensor<B, 1, K> {
    let data = buffer.into_data();
    let dtype = data.dtype;
    Tensor::from_data(data, (device, dtype))
}

/// The sum, in rank order and in f32, of the `blocks` equal blocks of `received` (f32 or bf16),
/// as elements of the same dtype (rounded to nearest for bf16). In f32 the sum is made in place
/// in the first block.
fn sum_of_blocks(received: HostBuffer, blocks: usize) -> HostBuffer {
    fn add(sum: &mut [f32], block: impl Iterator<Item = f32>) {
        sum.iter_mut().zip(block).for_each(|(s, v)| *s += v);
    }
    match received {
        HostBuffer::F32(mut values) => {
            let len = values.len() / blocks;
            let (sum, rest) = values.split_at_mut(len);
            rest.chunks_exact(len).for_each(|block| add(sum, block.iter().copied()));
            values.truncate(len);
            HostBuffer::F32(values)
        }
        HostBuffer::Bf16(values) => {
            let len = values.len() / blocks;
            let mut sum: Vec<f32> = values[..len].iter().map(|v| v.to_f32()).collect();
            values[len..].chunks_exact(len).for_each(|block| add(&mut sum, block.iter().map(|v| v.to_f32())));
            HostBuffer::Bf16(sum.into_iter().map(bf16::from_f32).collect())
        }
        HostBuffer::U8(_) => panic!("reduce_scatter sums f32 or bf16 tensors"),
    }
}

/// The two collectives that move bytes between every pair of ranks.
#[derive(Clone, Copy)]
enum Exchange {
    /// Every rank's whole buffer to every rank.
    AllGather,
    /// Block r of every rank's buffer to rank r.
    AllToAll,
}

/// How long a rank waiting for an exchange sleeps between tests of it. The communication thread
/// shares its rank's cores with the thread that computes: OpenMPI's blocking calls poll (even
/// yielding, they are picked again at once and switch the computing thread out thousands of
/// times a second), where a sleeping thread leaves the core alone. A few tests per exchange of
/// milliseconds cost little latency.
const POLL_INTERVAL: Duration = Duration::from_micros(50);

/// `kind` over `comm` of `send`'s elements, into a buffer that the collective writes whole:
/// `comm.size()` times as many elements for an all-gather, as many for an all-to-all. The raw
/// MPI calls: rsmpi's wrappers receive into initialised memory only.
fn exchange(comm: &SimpleCommunicator, send: &TensorData, kind: Exchange) -> HostBuffer {
    let size = comm.size() as usize;
    let bytes = send.as_bytes();
    let per_rank = match kind {
        Exchange::AllGather => bytes.len(),
        Exchange::AllToAll => bytes.len() / size,
    };
    let count = std::ffi::c_int::try_from(per_rank).expect("an MPI message of less than 2 GiB per rank");
    let len = per_rank * size / send.dtype.size();
    let byte = u8::equivalent_datatype().as_raw();
    // SAFETY: both collectives write `count` bytes from each of the `size` ranks at `recv`:
    // `len` elements of `send.dtype`, all of the buffer; `send` and `recv` outlive the request,
    // which is complete when `received` returns.
    unsafe {
        HostBuffer::received(send.dtype, len, |recv| {
            let (send, recv) = (bytes.as_ptr().cast(), recv.cast());
            let mut request = mpi::ffi::RSMPI_REQUEST_NULL;
            match kind {
                Exchange::AllGather => mpi::ffi::MPI_Iallgather(send, count, byte, recv, count, byte, comm.as_raw(), &mut request),
                Exchange::AllToAll => mpi::ffi::MPI_Ialltoall(send, count, byte, recv, count, byte, comm.as_raw(), &mut request),
            };
            wait_sleeping(&mut request);
        })
    }
}

/// Waits for `request`, testing it every [`POLL_INTERVAL`].
///
/// # Safety
/// `request` must be a request of a nonblocking MPI call whose buffers stay live until it returns.
unsafe fn wait_sleeping(request: &mut mpi::ffi::MPI_Request) {
    loop {
        let mut done = 0;
        // SAFETY: as the caller guarantees; the status is not wanted.
        unsafe { mpi::ffi::MPI_Test(request, &mut done, mpi::ffi::RSMPI_STATUS_IGNORE) };
        if done != 0 {
            return;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// What the communication thread runs: an exchange, then for a reduce-scatter the sum of what
/// came.
#[derive(Clone, Copy)]
enum Job {
    AllGather,
    ReduceScatter,
}

impl Job {
    /// Runs the job; `data` (the host copy sent) is freed before the sum.
    fn run(self, comm: &SimpleCommunicator, data: TensorData) -> HostBuffer {
        match self {
            Job::AllGather => exchange(comm, &data, Exchange::AllGather),
            Job::ReduceScatter => {
                // After the all-to-all, block r of what came is rank r's contribution to our slice.
                let received = exchange(comm, &data, Exchange::AllToAll);
                drop(data);
                sum_of_blocks(received, comm.size() as usize)
            }
        }
    }
}

impl MpiCollective {
    /// Starts `job` on a tensor's bytes (f32, bf16, or u8 for gathers): on the communication
    /// thread when there is one, else at once. The caller counts the traffic.
    fn start<B: Backend, K: BasicOps<B> + 'static>(&self, job: Job, tensor: Tensor<B, 1, K>) -> Pending<B, K> {
        let device = tensor.device();
        let data = host_data(tensor);
        match &self.comm_thread {
            Some(thread) => {
                let reply = thread.start(job, data);
                Pending::new(move || device_tensor(reply.recv().expect("the MPI communication thread ended early"), &device))
            }
            None => Pending::ready(device_tensor(job.run(&self.comm, data), &device)),
        }
    }

    /// Starts an all-gather of a tensor's bytes (f32, bf16 or u8), counted under `all_gather`.
    fn start_gather_of<B: Backend, K: BasicOps<B> + 'static>(&self, shard: Tensor<B, 1, K>) -> Pending<B, K> {
        let sent = shard.shape().num_elements() * shard.dtype().size();
        self.traffic.borrow_mut().all_gather.record(sent, sent * self.world.size);
        self.start(Job::AllGather, shard)
    }
}

impl<B: Backend> Collective<B> for MpiCollective {
    fn world(&self) -> &World {
        &self.world
    }

    fn all_gather(&self, shard: Tensor<B, 1>) -> Tensor<B, 1> {
        self.start_all_gather(shard).wait()
    }

    fn start_all_gather(&self, shard: Tensor<B, 1>) -> Pending<B> {
        self.start_gather_of(shard)
    }

    fn start_all_gather_bytes(&self, shard: Tensor<B, 1, Int>) -> Pending<B, Int> {
        self.start_gather_of(shard)
    }

    fn reduce_scatter(&self, full: Tensor<B, 1>) -> Tensor<B, 1> {
        self.start_reduce_scatter(full).wait()
    }

    fn start_reduce_scatter(&self, full: Tensor<B, 1>) -> Pending<B> {
        let size = self.world.size;
        let bytes = full.shape().num_elements() * full.dtype().size();
        if size == 1 {
            // The sum over one rank is the tensor itself: no trip through the host.
            self.traffic.borrow_mut().reduce_scatter.record(bytes, bytes);
            return Pending::ready(full);
        }
        assert_eq!(full.shape().num_elements() % size, 0, "reduce_scatter needs a length divisible by the world size");
        self.traffic.borrow_mut().reduce_scatter.record(bytes, bytes / size);
        self.start(Job::ReduceScatter, full)
    }

    fn all_reduce(&self, tensor: Tensor<B, 1>) -> Tensor<B, 1> {
        let device = tensor.device();
        let send = host_data(tensor).into_vec::<f32>().expect("all_reduce sums f32 tensors");
        let mut recv = vec![0f32; send.len()];
        self.comm.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        self.traffic.borrow_mut().all_reduce.record(send.len() * 4, recv.len() * 4);
        device_tensor(HostBuffer::F32(recv), &device)
    }

    fn broadcast(&self, tensor: Tensor<B, 1>, root: usize) -> Tensor<B, 1> {
        let device = tensor.device();
        let data = host_data(tensor);
        let dtype = data.dtype;
        let mut buffer = HostBuffer::copy_of(dtype, data.as_bytes());
        let bytes = buffer.bytes_mut();
        self.broadcast_bytes(bytes, root);
        self.traffic.borrow_mut().broadcast.record(bytes.len(), bytes.len());
        device_tensor(buffer, &device)
    }

    fn all_reduce_scalars(&self, values: &mut [f64], op: ReduceOp) {
        let send = values.to_vec();
        match op {
            ReduceOp::Sum => self.comm.all_reduce_into(&send[..], values, SystemOperation::sum()),
            ReduceOp::Max => self.comm.all_reduce_into(&send[..], values, SystemOperation::max()),
        }
        self.traffic.borrow_mut().all_reduce.record(send.len() * 8, send.len() * 8);
    }

    fn barrier(&self) {
        self.comm.barrier();
    }

    fn traffic(&self) -> Traffic {
        *self.traffic.borrow()
    }

    fn transport(&self) -> &'static str {
        "MPI"
    }

    /// An MPI communicator split by color (rank, size, local ranks and nodes among its members).
    fn split(&self, color: usize) -> Self {
        let color = Color::with_value(i32::try_from(color).expect("a color fits an MPI int"));
        let comm = self.comm.split_by_color(color).expect("every rank passes a defined color");
        MpiCollective::new(comm, self.threads_allowed)
    }
}

/// A collective to run on the communication thread, and where to send its result.
struct Started {
    job: Job,
    data: TensorData,
    reply: mpsc::Sender<HostBuffer>,
}

/// The thread that runs started all-gathers and reduce-scatters, in the order they were started.
struct CommThread {
    jobs: Option<mpsc::Sender<Started>>,
    handle: Option<JoinHandle<()>>,
}

/// A communicator handed to the communication thread, which alone uses it from then on.
struct OwnedComm(SimpleCommunicator);

// SAFETY: MPI was initialised with MPI_THREAD_MULTIPLE (checked before the thread is spawned),
// so MPI may be called from any thread; this communicator is used by the communication thread only.
unsafe impl Send for OwnedComm {}

impl CommThread {
    fn spawn(comm: SimpleCommunicator) -> Self {
        let (jobs, queue) = mpsc::channel::<Started>();
        let comm = OwnedComm(comm);
        let handle = std::thread::Builder::new()
            .name("mpi-comm".into())
            .spawn(move || {
                let comm = comm;
                for started in queue {
                    // The engine may have stopped waiting (an error): the result is then dropped.
                    let _ = started.reply.send(started.job.run(&comm.0, started.data));
                }
            })
            .expect("cannot start the MPI communication thread");
        Self { jobs: Some(jobs), handle: Some(handle) }
    }

    fn start(&self, job: Job, data: TensorData) -> mpsc::Receiver<HostBuffer> {
        let (reply, result) = mpsc::channel();
        self.jobs.as_ref().expect("running").send(Started { job, data, reply }).expect("the MPI communication thread ended early");
        result
    }
}

impl Drop for CommThread {
    /// Lets the thread finish what it was given and free its communicator before MPI is
    /// finalized.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
