//! Reaching burn-flex's own tensors from code generic over the backend, for one-pass kernels.
//!
//! burn-flex (the CPU backend) runs every tensor op as a pass of its own over memory, with no
//! fusion: an update that reads four shards and takes fourteen ops makes fourteen passes. Where
//! the backend is burn-flex (or burn's autodiff over it), such code may work on the tensors'
//! storage in one pass instead; on cubecl backends the generic tensor ops stay.

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::{Flex, FlexTensor, Layout};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive, backend::Backend};

/// Autodiff's tensor over burn-flex: the value (`primitive`) and its node in the graph.
pub type AutodiffFlexTensor = FloatTensor<Autodiff<Flex>>;

/// Whether `B` is burn-flex.
pub fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Flex>()
}

/// Whether `B` is burn's autodiff over burn-flex (the backend the engine trains with on CPU).
pub fn is_autodiff_flex<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Autodiff<Flex>>()
}

/// Whether `B` is burn-flex or autodiff over it: where the one-pass kernels can run.
pub fn is_flex_or_autodiff_flex<B: Backend>() -> bool {
    is_flex::<B>() || is_autodiff_flex::<B>()
}

/// Whether the model's f32 kernels run for a layer computing in `dtype` on `B`: f32 only. A
/// bf16 layer takes some statistics in f32 too, but keeps burn's ops for them: its results are
/// checked against torch's bf16 runs with bounds that the kernels' other rounding (f64 sums)
/// moved one loss past (tests/mixed_precision.rs, the sliding-window LoRA case).
pub fn f32_kernels_apply<B: Backend>(dtype: DType) -> bool {
    dtype == DType::F32 && is_flex_or_autodiff_flex::<B>()
}

/// `kernel` on `x` as burn-flex's tensor; it returns the output and what `op`'s backward needs.
/// On burn-flex that state is dropped; under autodiff over it the output is a node of the graph
/// whose backward is `op`, given the state when `x` is tracked. Panics on other backends.
pub fn with_backward<B: Backend, const D: usize, const E: usize, O>(
    x: Tensor<B, D>,
    op: O,
    kernel: impl FnOnce(FlexTensor) -> (FlexTensor, O::State),
) -> Tensor<B, E>
where
    O: Backward<Flex, 1>,
    O::State: Clone + Send + std::fmt::Debug + 'static,
{
    if is_flex::<B>() {
        return from_flex(kernel(into_flex(x)).0);
    }
    let x = into_autodiff_flex(x);
    let (output, state) = kernel(x.primitive);
    let output = match op.prepare::<NoCheckpointing>([x.node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    from_autodiff_flex(output)
}

/// `tensor` as a tensor of `T`, which must be `B` itself (checked).
fn same_backend<B: Backend, T: Backend, const D: usize>(tensor: Tensor<B, D>) -> Tensor<T, D> {
    let tensor: Box<dyn Any> = Box::new(tensor);
    *tensor.downcast::<Tensor<T, D>>().expect("the same backend")
}

/// `tensor` as burn-flex's tensor; panics unless [`is_flex::<B>`].
pub fn into_flex<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> FlexTensor {
    same_backend::<B, Flex, D>(tensor).into_primitive().tensor()
}

/// The inverse of [`into_flex`].
pub fn from_flex<B: Backend, const D: usize>(tensor: FlexTensor) -> Tensor<B, D> {
    same_backend(Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(tensor)))
}

/// `tensor` as autodiff's tensor over burn-flex; panics unless [`is_autodiff_flex::<B>`].
pub fn into_autodiff_flex<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> AutodiffFlexTensor {
    same_backend::<B, Autodiff<Flex>, D>(tensor).into_primitive().tensor()
}

/// The inverse of [`into_autodiff_flex`].
pub fn from_autodiff_flex<B: Backend, const D: usize>(tensor: AutodiffFlexTensor) -> Tensor<B, D> {
    same_backend(Tensor::<Autodiff<Flex>, D>::from_primitive(TensorPrimitive::Float(tensor)))
}

/// The f32 elements of a contiguous tensor, to write in place (copied first if the storage is
/// shared: burn-flex's copy-on-write). `None` for another dtype or a strided view.
pub fn f32_elements_mut(tensor: &mut FlexTensor) -> Option<&mut [f32]> {
    let layout = tensor.layout();
    if tensor.dtype() != DType::F32 || !layout.is_contiguous() {
        return None;
    }
    let range = layout.start_offset()..layout.start_offset() + layout.num_elements();
    Some(&mut tensor.storage_mut::<f32>()[range])
}

/// `flat` (rank 1) reshaped to `shape`. burn-flex copies a view that does not start at the
/// beginning of its buffer (a parameter's range of a gathered unit) to reshape it; here, on
/// burn-flex or autodiff over it, a contiguous view stays a view of the same buffer.
pub fn reshape_flat<B: Backend, const D: usize>(flat: Tensor<B, 1>, shape: [usize; D]) -> Tensor<B, D> {
    if !is_flex_or_autodiff_flex::<B>() {
        return flat.reshape(shape);
    }
    with_backward(flat, FlatView, |t| {
        let reshaped = if t.layout().is_contiguous() { view(t, shape) } else { t.reshape(Shape::from(shape.to_vec())) };
        (reshaped, ())
    })
}

/// A contiguous tensor's elements as a contiguous tensor of `shape`, same buffer and offset.
fn view<const D: usize>(t: FlexTensor, shape: [usize; D]) -> FlexTensor {
    let offset = t.layout().start_offset();
    let row_major = Layout::contiguous(Shape::from(shape.to_vec()));
    t.with_layout(Layout::new(row_major.shape().clone(), row_major.strides().to_vec(), offset))
}

/// [`reshape_flat`] under autodiff: the gradient flows back flattened.
#[derive(Debug)]
struct FlatView;

impl Backward<Flex, 1> for FlatView {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let numel = grad.layout().num_elements();
            grad.reshape(Shape::from(vec![numel]))
        });
    }
}
