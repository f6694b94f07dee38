//! From the op's generic tensors to the cube kernels: on a plain `CubeBackend` the forward alone;
//! under burn's autodiff over one, the forward and a `Backward` of three inputs (q, k, v) that
//! runs the backward kernels, as burn's examples/custom-cubecl-kernel does.

use std::any::TypeId;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::NoCheckpointing};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::{Tensor, TensorPrimitive, backend::Backend};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, kernel::into_contiguous};

use super::backward::{Saved, gradients};
use super::forward::forward;
use super::geometry::DeviceLayout;
use crate::attention::AttentionLayout;
use crate::downcast::same_backend;

/// The fused attention on `B`, which is `CubeBackend<R, F, I, BT>` or autodiff over it (checked).
pub(super) fn fused_attention<B: Backend, R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    layout: &AttentionLayout,
    scale: f64,
) -> Tensor<B, 4> {
    type Cube<R, F, I, BT> = CubeBackend<R, F, I, BT>;
    let device = q.device();
    if TypeId::of::<B>() == TypeId::of::<Cube<R, F, I, BT>>() {
        let cube = |x: Tensor<B, 4>| same_backend::<B, Cube<R, F, I, BT>, 4>(x).into_primitive().tensor();
        let device = same_backend_device::<B, Cube<R, F, I, BT>>(device);
        let layout = DeviceLayout::upload::<F, I, BT>(layout, &device);
        let (output, _lse) = forward(cube(q), cube(k), cube(v), &layout, scale as f32);
        return same_backend(Tensor::<Cube<R, F, I, BT>, 4>::from_primitive(TensorPrimitive::Float(output)));
    }
    let tracked = |x: Tensor<B, 4>| same_backend::<B, Autodiff<Cube<R, F, I, BT>>, 4>(x).into_primitive().tensor();
    let device = same_backend_device::<B, Autodiff<Cube<R, F, I, BT>>>(device);
    let layout = DeviceLayout::upload::<F, I, BT>(layout, &device);
    let (q, k, v) = (tracked(q), tracked(k), tracked(v));
    let output = match FusedAttentionBackward
        .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            // The backward kernels index q, k and v as contiguous: the model passes transposed views.
            let (q, k, v) = (into_contiguous(q.primitive), into_contiguous(k.primitive), into_contiguous(v.primitive));
            let (output, lse) = forward(q.clone(), k.clone(), v.clone(), &layout, scale as f32);
            let saved = Saved { q, k, v, output: output.clone(), lse, layout, scale: scale as f32 };
            prep.finish(saved, output)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(q.primitive, k.primitive, v.primitive, &layout, scale as f32).0),
    };
    same_backend(Tensor::<Autodiff<Cube<R, F, I, BT>>, 4>::from_primitive(TensorPrimitive::Float(output)))
}

/// `device` as `T`'s device, `T` being `B` itself (checked).
fn same_backend_device<B: Backend, T: Backend>(device: B::Device) -> T::Device {
    let device: Box<dyn std::any::Any> = Box::new(device);
    *device.downcast::<T::Device>().expect("the same backend")
}

/// The backward of [`fused_attention`] under autodiff: dq, dk, dv from the output's gradient.
#[derive(Debug)]
struct FusedAttentionBackward;

impl<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement> Backward<CubeBackend<R, F, I, BT>, 3> for FusedAttentionBackward {
    type State = Saved<R>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let grad_output = grads.consume::<CubeBackend<R, F, I, BT>>(&ops.node);
        let gradients = gradients(ops.state, grad_output);
        for (parent, gradient) in ops.parents.into_iter().zip(gradients) {
            if let Some(node) = parent {
                grads.register::<CubeBackend<R, F, I, BT>>(node.id, gradient);
            }
        }
    }
}
