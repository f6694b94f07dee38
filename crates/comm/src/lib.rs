//! Ranks and collectives. `World` says who this process is; the `Collective` trait is what the
//! engine moves tensors with (all-gather, reduce-scatter, all-reduce, broadcast, barrier), counting
//! the bytes of every call. `MpiCollective` implements it over OpenMPI for any backend. For the
//! GPU (feature `nccl`), `NcclCollective` implements it over NCCL on burn-cuda's device buffers;
//! what each NCCL call moves, how ranks share the unique id, and the deadline of a call are pure
//! modules, tested without a GPU. `Watched` puts a deadline on every call of any of them.

mod collective;
mod host_buffer;
mod mpi_collective;
#[cfg(feature = "nccl")]
mod nccl_collective;
mod nccl_counts;
// Used by the NCCL collective only; built (and unit-tested) without it too.
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
mod nccl_id;
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
mod nccl_wait;
mod watchdog;
mod world;

pub use collective::{Collective, OpTraffic, Pending, ReduceOp, Traffic};
pub use mpi_collective::{MpiCollective, MpiSession};
#[cfg(feature = "nccl")]
pub use nccl_collective::{NcclCollective, NcclSetupError, nccl_dtype};
pub use nccl_counts::{CountError, NcclCall, NcclOp, WireDtype};
pub use watchdog::{Phase, WatchdogSettings, Watched};
pub use world::World;
