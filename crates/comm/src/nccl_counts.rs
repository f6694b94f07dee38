//! What one NCCL call moves, worked out before it is issued: the dtype on the wire, the element
//! count NCCL is given, and the bytes this rank sends and gets back (counted as `MpiCollective`
//! counts them, so that the two collectives' `Traffic` compare). Pure arithmetic, so it is tested
//! without a GPU; the NCCL collective (feature `nccl`) issues the calls.

use burn::tensor::DType;

use crate::{OpTraffic, Traffic};

/// A call NCCL cannot make as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CountError {
    #[error("the NCCL collective moves f32, bf16 or u8 tensors, not {0:?}")]
    Dtype(DType),
    #[error("{op} sums floats (f32 or bf16), not {dtype:?}")]
    SumNotFloat { op: &'static str, dtype: DType },
    #[error("{op} needs a length divisible by the world size {world}, got {len}")]
    NotDivisible { op: &'static str, len: usize, world: usize },
    #[error("{op} sums f32 tensors, not {dtype:?}")]
    SumNotF32 { op: &'static str, dtype: DType },
    #[error("broadcast from rank {root}, but the communicator has {world} rank(s)")]
    NoSuchRoot { root: usize, world: usize },
}

/// The element types the collective moves: floats, and bytes (NF4 codes) that are gathered
/// but never summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireDtype {
    F32,
    Bf16,
    U8,
}

impl WireDtype {
    pub fn of(dtype: DType) -> Result<Self, CountError> {
        match dtype {
            DType::F32 => Ok(Self::F32),
            DType::BF16 => Ok(Self::Bf16),
            DType::U8 => Ok(Self::U8),
            other => Err(CountError::Dtype(other)),
        }
    }

    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::Bf16 => 2,
            Self::U8 => 1,
        }
    }
}

/// The NCCL collectives the `Collective` trait's device methods map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NcclOp {
    AllGather,
    ReduceScatter,
    AllReduce,
    Broadcast { root: usize },
}

impl NcclOp {
    /// The name in messages (as the trait's method).
    pub fn name(self) -> &'static str {
        match self {
            Self::AllGather => "all_gather",
            Self::ReduceScatter => "reduce_scatter",
            Self::AllReduce => "all_reduce",
            Self::Broadcast { .. } => "broadcast",
        }
    }

    /// What this op moves for an input of `len` elements of `dtype` over `world` ranks.
    pub fn call(self, len: usize, dtype: DType, world: usize) -> Result<NcclCall, CountError> {
        match self {
            Self::AllGather => NcclCall::all_gather(len, dtype, world),
            Self::ReduceScatter => NcclCall::reduce_scatter(len, dtype, world),
            Self::AllReduce => NcclCall::all_reduce(len, dtype),
            Self::Broadcast { root } if root >= world => Err(CountError::NoSuchRoot { root, world }),
            Self::Broadcast { .. } => NcclCall::broadcast(len, dtype),
        }
    }

    /// The counters of this op in `traffic`.
    pub fn counters(self, traffic: &mut Traffic) -> &mut OpTraffic {
        match self {
            Self::AllGather => &mut traffic.all_gather,
            Self::ReduceScatter => &mut traffic.reduce_scatter,
            Self::AllReduce => &mut traffic.all_reduce,
            Self::Broadcast { .. } => &mut traffic.broadcast,
        }
    }
}

/// One collective call on this rank: `count` is the element count passed to NCCL (per rank for
/// all_gather's input and reduce_scatter's output, as NCCL defines them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NcclCall {
    pub dtype: WireDtype,
    pub count: usize,
    pub sent_elems: usize,
    pub received_elems: usize,
}

impl NcclCall {
    /// Every rank's `len` elements, concatenated in rank order: `world * len` back.
    pub fn all_gather(len: usize, dtype: DType, world: usize) -> Result<Self, CountError> {
        Ok(Self { dtype: WireDtype::of(dtype)?, count: len, sent_elems: len, received_elems: len * world })
    }

    /// `len` elements summed over ranks; this rank keeps its `len / world`.
    pub fn reduce_scatter(len: usize, dtype: DType, world: usize) -> Result<Self, CountError> {
        if !len.is_multiple_of(world) {
            return Err(CountError::NotDivisible { op: "reduce_scatter", len, world });
        }
        let wire = WireDtype::of(dtype)?;
        if wire == WireDtype::U8 {
            return Err(CountError::SumNotFloat { op: "reduce_scatter", dtype });
        }
        Ok(Self { dtype: wire, count: len / world, sent_elems: len, received_elems: len / world })
    }

    /// An element-wise sum over ranks, in f32 as the `Collective` trait defines it.
    pub fn all_reduce(len: usize, dtype: DType) -> Result<Self, CountError> {
        if dtype != DType::F32 {
            return Err(CountError::SumNotF32 { op: "all_reduce", dtype });
        }
        Ok(Self { dtype: WireDtype::F32, count: len, sent_elems: len, received_elems: len })
    }

    /// The root's `len` elements on every rank.
    pub fn broadcast(len: usize, dtype: DType) -> Result<Self, CountError> {
        Ok(Self { dtype: WireDtype::of(dtype)?, count: len, sent_elems: len, received_elems: len })
    }

    /// Adds this call's bytes to `traffic`.
    pub fn record(&self, traffic: &mut OpTraffic) {
        let size = self.dtype.size();
        traffic.record(self.sent_elems * size, self.received_elems * size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_gather_gets_world_times_the_shard() {
        let call = NcclCall::all_gather(1000, DType::BF16, 4).unwrap();
        assert_eq!((call.dtype, call.count, call.sent_elems, call.received_elems), (WireDtype::Bf16, 1000, 1000, 4000));
        let mut traffic = OpTraffic::default();
        call.record(&mut traffic);
        assert_eq!(traffic, OpTraffic { calls: 1, sent: 2000, received: 8000 });
    }

    #[test]
    fn reduce_scatter_keeps_one_slice_and_needs_a_divisible_length() {
        let call = NcclCall::reduce_scatter(4096, DType::F32, 4).unwrap();
        assert_eq!((call.count, call.sent_elems, call.received_elems), (1024, 4096, 1024));
        let mut traffic = OpTraffic::default();
        call.record(&mut traffic);
        assert_eq!(traffic, OpTraffic { calls: 1, sent: 16384, received: 4096 });
        assert_eq!(NcclCall::reduce_scatter(10, DType::F32, 4), Err(CountError::NotDivisible { op: "reduce_scatter", len: 10, world: 4 }));
    }

    #[test]
    fn all_reduce_sums_f32_only_and_broadcast_moves_either_dtype() {
        assert_eq!(NcclCall::all_reduce(3, DType::F32).unwrap().count, 3);
        assert!(NcclCall::all_reduce(3, DType::BF16).is_err());
        let call = NcclCall::broadcast(8, DType::BF16).unwrap();
        assert_eq!((call.dtype, call.sent_elems, call.received_elems), (WireDtype::Bf16, 8, 8));
    }

    #[test]
    fn bytes_are_gathered_one_byte_each_but_never_summed() {
        let call = NcclCall::all_gather(300, DType::U8, 2).unwrap();
        assert_eq!((call.dtype, call.count, call.received_elems), (WireDtype::U8, 300, 600));
        let mut traffic = OpTraffic::default();
        call.record(&mut traffic);
        assert_eq!(traffic, OpTraffic { calls: 1, sent: 300, received: 600 });
        assert_eq!(NcclCall::reduce_scatter(8, DType::U8, 2), Err(CountError::SumNotFloat { op: "reduce_scatter", dtype: DType::U8 }));
        assert!(NcclCall::all_reduce(8, DType::U8).is_err());
    }

    #[test]
    fn other_dtypes_are_refused() {
        assert_eq!(NcclCall::all_gather(8, DType::F16, 2), Err(CountError::Dtype(DType::F16)));
        assert_eq!(WireDtype::of(DType::I32), Err(CountError::Dtype(DType::I32)));
    }

    #[test]
    fn each_op_makes_its_call_and_counts_under_its_name() {
        assert_eq!(NcclOp::AllGather.call(6, DType::F32, 3), NcclCall::all_gather(6, DType::F32, 3));
        assert_eq!(NcclOp::ReduceScatter.call(6, DType::BF16, 3), NcclCall::reduce_scatter(6, DType::BF16, 3));
        assert_eq!(NcclOp::AllReduce.call(6, DType::F32, 3), NcclCall::all_reduce(6, DType::F32));
        assert_eq!(NcclOp::Broadcast { root: 2 }.call(6, DType::F32, 3), NcclCall::broadcast(6, DType::F32));
        assert_eq!(NcclOp::Broadcast { root: 3 }.call(6, DType::F32, 3), Err(CountError::NoSuchRoot { root: 3, world: 3 }));
        let mut traffic = Traffic::default();
        NcclOp::ReduceScatter.call(6, DType::F32, 3).unwrap().record(NcclOp::ReduceScatter.counters(&mut traffic));
        assert_eq!(traffic.reduce_scatter, OpTraffic { calls: 1, sent: 24, received: 8 });
        assert_eq!(traffic.all_gather, OpTraffic::default());
        let names: Vec<_> =
            [NcclOp::AllGather, NcclOp::ReduceScatter, NcclOp::AllReduce, NcclOp::Broadcast { root: 0 }].map(NcclOp::name).into();
        assert_eq!(names, ["all_gather", "reduce_scatter", "all_reduce", "broadcast"]);
    }

    /// The same bytes as MpiCollective counts for the same calls (mpi_collective.rs records an
    /// all_gather as (sent, sent * world) and a reduce_scatter as (sent, sent / world)).
    #[test]
    fn byte_counts_match_the_mpi_collective() {
        let (len, world) = (512, 2);
        let mut gather = OpTraffic::default();
        NcclCall::all_gather(len, DType::F32, world).unwrap().record(&mut gather);
        assert_eq!((gather.sent, gather.received), ((len * 4) as u64, (len * 4 * world) as u64));
        let mut scatter = OpTraffic::default();
        NcclCall::reduce_scatter(len, DType::BF16, world).unwrap().record(&mut scatter);
        assert_eq!((scatter.sent, scatter.received), ((len * 2) as u64, (len * 2 / world) as u64));
    }
}
