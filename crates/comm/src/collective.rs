//! The collective operations the engine needs, on flat tensors of any backend.
//!
//! The contract is in tensors, not host slices, so that an implementation on device memory (NCCL)
//! moves them without a host round-trip; MPI copies to the host and back inside its methods.

use burn::tensor::{BasicOps, DType, Float, Int, Tensor, TensorKind, backend::Backend};

use crate::World;

/// How `all_reduce_scalars` combines values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// Calls and bytes of one kind of operation on this rank.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpTraffic {
    pub calls: u64,
    /// Bytes of the buffers this rank passed in.
    pub sent: u64,
    /// Bytes of the buffers it got back.
    pub received: u64,
}

impl OpTraffic {
    pub fn record(&mut self, sent: usize, received: usize) {
        self.calls += 1;
        self.sent += sent as u64;
        self.received += received as u64;
    }

    pub fn since(&self, earlier: &OpTraffic) -> OpTraffic {
        OpTraffic { calls: self.calls - earlier.calls, sent: self.sent - earlier.sent, received: self.received - earlier.received }
    }
}

/// Running totals per operation since the collective was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub all_gather: OpTraffic,
    pub reduce_scatter: OpTraffic,
    pub all_reduce: OpTraffic,
    pub broadcast: OpTraffic,
}

impl Traffic {
    /// Both collectives' traffic together.
    pub fn plus(&self, other: &Traffic) -> Traffic {
        let add =
            |a: &OpTraffic, b: &OpTraffic| OpTraffic { calls: a.calls + b.calls, sent: a.sent + b.sent, received: a.received + b.received };
        Traffic {
            all_gather: add(&self.all_gather, &other.all_gather),
            reduce_scatter: add(&self.reduce_scatter, &other.reduce_scatter),
            all_reduce: add(&self.all_reduce, &other.all_reduce),
            broadcast: add(&self.broadcast, &other.broadcast),
        }
    }

    pub fn since(&self, earlier: &Traffic) -> Traffic {
        Traffic {
            all_gather: self.all_gather.since(&earlier.all_gather),
            reduce_scatter: self.reduce_scatter.since(&earlier.reduce_scatter),
            all_reduce: self.all_reduce.since(&earlier.all_reduce),
            broadcast: self.broadcast.since(&earlier.broadcast),
        }
    }
}

/// A collective under way (an all-gather or a reduce-scatter): [`Pending::wait`] returns its
/// result. It lets the engine gather the next unit while the current one computes (prefetch),
/// and reduce a unit's gradients while the next one computes its own.
pub struct Pending<B: Backend, K: TensorKind<B> = Float> {
    wait: Box<dyn FnOnce() -> Tensor<B, 1, K>>,
}

impl<B: Backend, K: TensorKind<B> + BasicOps<B> + 'static> Pending<B, K> {
    /// A gather whose result `wait` produces (blocking until the data is there).
    pub fn new(wait: impl FnOnce() -> Tensor<B, 1, K> + 'static) -> Self {
        Self { wait: Box::new(wait) }
    }

    /// A gather that has already completed.
    pub fn ready(result: Tensor<B, 1, K>) -> Self {
        Self::new(move || result)
    }

    pub fn wait(self) -> Tensor<B, 1, K> {
        (self.wait)()
    }
}

/// Collective operations over the ranks of a job. Every rank must make the same calls in the same
/// order with tensors of the same length and dtype. Gathers and reduce-scatters take f32 or bf16
/// tensors and return the dtype they were given.
pub trait Collective<B: Backend> {
    fn world(&self) -> &World;

    /// Concatenates every rank's `shard` in rank order: the result has `size * len` elements.
    fn all_gather(&self, shard: Tensor<B, 1>) -> Tensor<B, 1>;

    /// Starts an all-gather that may proceed while the caller computes. Started gathers and
    /// reduce-scatters complete in the order they were started; other collectives may be
    /// called while one is pending. By default the gather runs at once.
    fn start_all_gather(&self, shard: Tensor<B, 1>) -> Pending<B> {
        Pending::ready(self.all_gather(shard))
    }

    /// [`Collective::start_all_gather`] of bytes: a u8 tensor (NF4 codes), returned as u8. By
    /// default the bytes travel as bf16 values (exact for 0..=255, but two bytes per byte); an
    /// implementation that can should move them as they are.
    fn start_all_gather_bytes(&self, shard: Tensor<B, 1, Int>) -> Pending<B, Int> {
        let pending = self.start_all_gather(shard.float().cast(DType::BF16));
        Pending::new(move || pending.wait().int().cast(DType::U8))
    }

    /// Sums `full` over ranks and returns this rank's slice `[rank*len/size, (rank+1)*len/size)`;
    /// `len` must be a multiple of the world size. The sum runs in rank order on every element,
    /// so results are the same from run to run.
    fn reduce_scatter(&self, full: Tensor<B, 1>) -> Tensor<B, 1>;

    /// [`Collective::reduce_scatter`], started so that it may proceed while the caller
    /// computes, in order with the started gathers. By default it runs at once.
    fn start_reduce_scatter(&self, full: Tensor<B, 1>) -> Pending<B> {
        Pending::ready(self.reduce_scatter(full))
    }

    /// Element-wise sum over ranks (f32).
    fn all_reduce(&self, tensor: Tensor<B, 1>) -> Tensor<B, 1>;

    /// `root`'s tensor on every rank.
    fn broadcast(&self, tensor: Tensor<B, 1>, root: usize) -> Tensor<B, 1>;

    /// Combines a few host scalars (token counts, loss sums, norms) over ranks, in place; counted
    /// under `all_reduce`.
    fn all_reduce_scalars(&self, values: &mut [f64], op: ReduceOp);

    /// Every rank's `mine` (of the same length on each), in rank order, on every rank: a sum in
    /// which each rank fills only its own slots.
    fn all_gather_scalars(&self, mine: &[f64]) -> Vec<f64> {
        let world = self.world();
        let mut all = vec![0.0; world.size * mine.len()];
        all[world.rank * mine.len()..][..mine.len()].copy_from_slice(mine);
        self.all_reduce_scalars(&mut all, ReduceOp::Sum);
        all
    }

    fn barrier(&self);

    fn traffic(&self) -> Traffic;

    /// What carries the tensor collectives ("MPI", "NCCL"), for the run's header. Host scalars
    /// always go over MPI.
    fn transport(&self) -> &'static str;

    /// A collective over the ranks that pass the same `color`, in rank order, with its own
    /// world and traffic counters (shard groups, replicas). Every rank must call it.
    fn split(&self, color: usize) -> Self
    where
        Self: Sized;
}
