//! How a failing run ends its job. An error that every rank meets at the same point (a bad run
//! config, a damaged save, a non-finite step, a stop during start-up) is reported once, by rank
//! 0, and the ranks end together; any other error ends the job at once with MPI_Abort from the
//! rank that found it (the others may be waiting for it in a collective).

use anyhow::Result;
use burn::tensor::backend::Backend;
use shard_comm::{Collective, ReduceOp};

/// An error every rank returns at the same point of the run.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct OnEveryRank(pub anyhow::Error);

/// `result` of a point that every rank reaches: when every rank failed, their errors become
/// [`OnEveryRank`] (one all-reduce, which every rank must make).
pub fn agree<T, B: Backend, C: Collective<B>>(comm: &C, result: Result<T>) -> Result<T> {
    let mut failed = [f64::from(u8::from(result.is_err()))];
    comm.all_reduce_scalars(&mut failed, ReduceOp::Sum);
    match result {
        Err(e) if failed[0] as usize == comm.world().size && !e.is::<OnEveryRank>() => Err(OnEveryRank(e).into()),
        other => other,
    }
}

/// Whether every rank returned `e` at the same point (see [`OnEveryRank`]).
pub fn on_every_rank(e: &anyhow::Error) -> bool {
    e.is::<OnEveryRank>() || e.is::<crate::interrupt::StoppedDuringStartup>()
}
