//! Ranks and collectives. `World` says who this process is; the `Collective` trait is what the
//! engine moves tensors with (all-gather, reduce-scatter, all-reduce, broadcast, barrier), counting
//! the bytes of every call. `MpiCollective` implements it over OpenMPI for any backend; an NCCL
//! implementation works on the same tensors in device memory. `Watched` puts a deadline on every
//! call of any of them.

mod collective;
mod mpi_collective;
mod watchdog;
mod world;

pub use collective::{Collective, OpTraffic, PendingGather, ReduceOp, Traffic};
pub use mpi_collective::{MpiCollective, MpiSession};
pub use watchdog::{Phase, WatchdogSettings, Watched};
pub use world::World;
