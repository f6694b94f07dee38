//! Reaching burn-flex's own tensors from code generic over the backend, for one-pass kernels.
//!
//! burn-flex (the CPU backend) runs every tensor op as a pass of its own over memory, with no
//! fusion: an update that reads four shards and takes fourteen ops makes fourteen passes. Where
//! the backend is burn-flex (or burn's autodiff over it), such code may work on the tensors'
//! storage in one pass instead; on cubecl backends the generic tensor ops stay.

use std::any::TypeId;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::ops::{Backward, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive, backend::Backend};

use crate::downcast::same_backend;

/// Autodiff's tensor over burn-flex: the value (`primitive`) and its node in the graph.
type AutodiffFlexTensor = FloatTensor<Autodiff<Flex>>;

/// Whether `B` is burn-flex.
pub(crate) fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Flex>()
}

/// Whether `B` is burn's autodiff over burn-flex (the backend the engine trains with on CPU).
pub(crate) fn is_autodiff_flex<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Autodiff<Flex>>()
}

/// Whether `B` is burn-flex or autodiff over it: where the one-pass kernels can run.
pub(crate) fn is_flex_or_autodiff_flex<B: Backend>() -> bool {
    is_flex::<B>() || is_autodiff_flex::<B>()
}

/// Whether the f32 kernels run for a tensor of `dtype` on `B`: f32 on burn-flex only. A bf16
/// layer takes some statistics in f32 too, but keeps burn's ops for them: its results are
/// checked against torch's bf16 runs with bounds that the kernels' other rounding (f64 sums)
/// moved one loss past (tests/mixed_precision.rs, the sliding-window LoRA case).
pub(crate) fn f32_kernels_apply<B: Backend>(dtype: DType) -> bool {
    dtype == DType::F32 && is_flex_or_autodiff_flex::<B>()
}

/// `kernel` on `x` as burn-flex's tensor; it returns the output and what `op`'s backward needs.
/// On burn-flex that state is dropped; under autodiff over it the output is a node of the graph
/// whose backward is `op`, given the state when `x` is tracked. Panics on other backends.
pub(crate) fn with_backward<B: Backend, const D: usize, const E: usize, O>(
    x: Tensor<B, D>,
    op: O,
    kernel: impl FnOnce(FlexTensor) -> (FlexTensor, O::State),
) -> Tensor<B, E>
where
    O: Backward<Flex, 1>,
    O::State: Clone + Send + std::fmt::Debug + 'static,
{
    with_backward_n([x], op, |[x]| kernel(x))
}

/// [`with_backward`] for an op of `N` inputs: the state goes to `op`'s backward when any of
/// them is tracked.
pub(crate) fn with_backward_n<B: Backend, const D: usize, const E: usize, const N: usize, O>(
    xs: [Tensor<B, D>; N],
    op: O,
    kernel: impl FnOnce([FlexTensor; N]) -> (FlexTensor, O::State),
) -> Tensor<B, E>
where
    O: Backward<Flex, N>,
    O::State: Clone + Send + std::fmt::Debug + 'static,
{
    if is_flex::<B>() {
        return from_flex(kernel(xs.map(into_flex)).0);
    }
    let xs = xs.map(into_autodiff_flex);
    let nodes = xs.each_ref().map(|x| x.node.clone());
    let (output, state) = kernel(xs.map(|x| x.primitive));
    let output = match op.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    from_autodiff_flex(output)
}

/// `tensor` as burn-flex's tensor; panics unless [`is_flex::<B>`].
pub(crate) fn into_flex<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> FlexTensor {
    same_backend::<B, Flex, D>(tensor).into_primitive().tensor()
}

/// The inverse of [`into_flex`].
pub(crate) fn from_flex<B: Backend, const D: usize>(tensor: FlexTensor) -> Tensor<B, D> {
    same_backend(Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(tensor)))
}

/// `tensor` as autodiff's tensor over burn-flex; panics unless [`is_autodiff_flex::<B>`].
pub(crate) fn into_autodiff_flex<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> AutodiffFlexTensor {
    same_backend::<B, Autodiff<Flex>, D>(tensor).into_primitive().tensor()
}

/// The inverse of [`into_autodiff_flex`].
pub(crate) fn from_autodiff_flex<B: Backend, const D: usize>(tensor: AutodiffFlexTensor) -> Tensor<B, D> {
    same_backend(Tensor::<Autodiff<Flex>, D>::from_primitive(TensorPrimitive::Float(tensor)))
}

/// The f32 elements of a contiguous tensor, to write in place (copied first if the storage is
/// shared: burn-flex's copy-on-write). `None` for another dtype or a strided view.
pub(crate) fn f32_elements_mut(tensor: &mut FlexTensor) -> Option<&mut [f32]> {
    let layout = tensor.layout();
    if tensor.dtype() != DType::F32 || !layout.is_contiguous() {
        return None;
    }
    let range = layout.start_offset()..layout.start_offset() + layout.num_elements();
    Some(&mut tensor.storage_mut::<f32>()[range])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels run on burn-flex and autodiff over it, for f32 only.
    #[test]
    fn f32_kernels_apply_to_f32_on_burn_flex_only() {
        assert!(f32_kernels_apply::<Flex>(DType::F32) && f32_kernels_apply::<Autodiff<Flex>>(DType::F32));
        assert!(!f32_kernels_apply::<Autodiff<Flex>>(DType::BF16));
    }
}
