//! The IEEE f32 matmul on the cubecl backends: burn-wgpu (feature `wgpu`) and burn-cuda (feature
//! `cuda`), f32, and burn's autodiff over them.
//!
//! burn-cubecl 0.21's matmul (without autotune) launches cubek's `Strategy::Auto`: its tensor-core
//! (cmma) kernel first, whose blueprint turns f32 operands into TF32 where the GPU has it
//! (cubek-matmul's `adjust_dtypes`), and the unit kernel where there are no tensor cores. Here the
//! unit kernel (`Strategy::SimpleUnit`: each unit computes its tile with plain f32 multiply-adds,
//! `TileMatmulKind::Register`, which needs no accelerator, so its stages keep f32) is launched
//! directly, through the same `launch_ref` that burn-cubecl calls, into an output allocated as
//! burn-cubecl allocates it. It takes any shape, batched, and strided (transposed) inputs, as
//! `Strategy::Auto` falls back on it for all of them. Under autodiff its backward (dA = dC·Bᵀ,
//! dB = Aᵀ·dC) goes through the same launch.

use burn::tensor::{Tensor, backend::Backend};

#[cfg(feature = "cuda")]
use burn_cubecl::cubecl::cuda::CudaRuntime;
#[cfg(feature = "wgpu")]
use burn_cubecl::cubecl::wgpu::WgpuRuntime;

/// Whether B is burn-wgpu or burn-cuda in f32 (or autodiff over one): the backends whose f32
/// matmuls this module launches.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(clippy::extra_unused_type_parameters))]
pub(crate) fn serves<B: Backend>() -> bool {
    #[cfg(feature = "wgpu")]
    if crate::downcast::is_cube_backend::<B, WgpuRuntime, f32, i32, u32>() {
        return true;
    }
    #[cfg(feature = "cuda")]
    if crate::downcast::is_cube_backend::<B, CudaRuntime, f32, i32, u8>() {
        return true;
    }
    false
}

/// `lhs` · `rhs` (f32, the same leading dimensions) without tensor cores; only called when
/// `serves::<B>()`.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(unused_variables))]
pub(crate) fn ieee_matmul<B: Backend, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "wgpu")]
    if crate::downcast::is_cube_backend::<B, WgpuRuntime, f32, i32, u32>() {
        return cube::ieee_matmul::<B, WgpuRuntime, u32, D>(lhs, rhs);
    }
    #[cfg(feature = "cuda")]
    if crate::downcast::is_cube_backend::<B, CudaRuntime, f32, i32, u8>() {
        return cube::ieee_matmul::<B, CudaRuntime, u8, D>(lhs, rhs);
    }
    unreachable!("{} has no IEEE matmul launch of its own", std::any::type_name::<B>())
}

/// The launch and its backward, for any cubecl runtime R (BT: the backend's bool element).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube {
    use std::any::TypeId;

    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary};
    use burn::tensor::ops::FloatTensorOps;
    use burn::tensor::{Tensor, TensorPrimitive, backend::Backend};
    use burn_cubecl::kernel::matmul::init_matmul_output;
    use burn_cubecl::tensor::CubeTensor;
    use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};
    use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
    use cubek::matmul::launch::{Strategy, launch_ref};
    use cubek::std::InputBinding;

    use crate::downcast::same_backend;

    /// The backend (burn-wgpu's or burn-cuda's type) in f32.
    type Cube<R, BT> = CubeBackend<R, f32, i32, BT>;

    /// `lhs` · `rhs` on B, which is `Cube<R, BT>` or autodiff over it (checked).
    pub(super) fn ieee_matmul<B: Backend, R: CubeRuntime, BT: BoolElement, const D: usize>(
        lhs: Tensor<B, D>,
        rhs: Tensor<B, D>,
    ) -> Tensor<B, D> {
        if TypeId::of::<B>() == TypeId::of::<Cube<R, BT>>() {
            let [lhs, rhs] = [lhs, rhs].map(|t| same_backend::<B, Cube<R, BT>, D>(t).into_primitive().tensor());
            return same_backend(Tensor::<Cube<R, BT>, D>::from_primitive(TensorPrimitive::Float(launch(lhs, rhs))));
        }
        let [lhs, rhs] = [lhs, rhs].map(|t| same_backend::<B, Autodiff<Cube<R, BT>>, D>(t).into_primitive().tensor());
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        let output = launch(lhs.primitive.clone(), rhs.primitive.clone());
        let output = match IeeeMatmul.prepare::<NoCheckpointing>([lhs.node, rhs.node]).compute_bound().stateful() {
            // Each operand is kept only for the other's gradient.
            OpsKind::Tracked(prep) => prep.finish((rhs_tracked.then_some(lhs.primitive), lhs_tracked.then_some(rhs.primitive)), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        same_backend(Tensor::<Autodiff<Cube<R, BT>>, D>::from_primitive(TensorPrimitive::Float(output)))
    }

    /// lhs · rhs with cubek's unit matmul, into a new tensor of lhs's dtype.
    fn launch<R: CubeRuntime>(lhs: CubeTensor<R>, rhs: CubeTensor<R>) -> CubeTensor<R> {
        let out = init_matmul_output(&lhs, &rhs, lhs.dtype);
        let shapes = format!("{:?} x {:?}", lhs.meta.shape(), rhs.meta.shape());
        let mut dtypes =
            MatmulElems::from_globals(&MatmulGlobalElems { lhs: lhs.dtype.into(), rhs: rhs.dtype.into(), out: out.dtype.into() });
        let (lhs_dtype, rhs_dtype) = (lhs.dtype.into(), rhs.dtype.into());
        let (lhs, rhs) = (InputBinding::new(lhs.binding(), lhs_dtype), InputBinding::new(rhs.binding(), rhs_dtype));
        launch_ref(&Strategy::SimpleUnit(Default::default()), &out.client, lhs, rhs, out.clone().binding(), &mut dtypes)
            .unwrap_or_else(|e| panic!("cubek's unit matmul did not launch for {shapes}: {e:?}"));
        out
    }

    /// The backward of [`ieee_matmul`] under autodiff.
    #[derive(Debug)]
    struct IeeeMatmul;

    impl<R: CubeRuntime, BT: BoolElement> Backward<Cube<R, BT>, 2> for IeeeMatmul {
        /// lhs when rhs needs its gradient, rhs when lhs needs its.
        type State = (Option<CubeTensor<R>>, Option<CubeTensor<R>>);

        /// C = A·B: dA = dC·Bᵀ, dB = Aᵀ·dC (the transposes are views).
        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (lhs, rhs) = ops.state;
            let transposed = |t: Option<CubeTensor<R>>| Cube::<R, BT>::float_transpose(t.expect("kept for the other operand's gradient"));
            binary::<Cube<R, BT>, _, _>(
                ops.parents,
                ops.node,
                grads,
                |grad| launch(grad, transposed(rhs)),
                |grad| launch(transposed(lhs), grad),
            );
        }
    }
}
