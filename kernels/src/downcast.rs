//! Code generic over the backend that has a path of its own for one concrete backend reaches that
//! backend's tensors through here, once it has checked (by `TypeId`) that B is that backend.

use std::any::Any;

use burn::tensor::{Tensor, backend::Backend};

/// `tensor` as a tensor of `T`, which must be `B` itself (checked).
pub(crate) fn same_backend<B: Backend, T: Backend, const D: usize>(tensor: Tensor<B, D>) -> Tensor<T, D> {
    let tensor: Box<dyn Any> = Box::new(tensor);
    *tensor.downcast::<Tensor<T, D>>().expect("the same backend")
}

/// Whether `B` is `CubeBackend<R, F, I, BT>` (burn-wgpu, burn-cuda) or burn's autodiff over it.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub(crate) fn is_cube_backend<
    B: Backend,
    R: burn_cubecl::CubeRuntime,
    F: burn_cubecl::FloatElement,
    I: burn_cubecl::IntElement,
    BT: burn_cubecl::BoolElement,
>() -> bool {
    use std::any::TypeId;
    type Cube<R, F, I, BT> = burn_cubecl::CubeBackend<R, F, I, BT>;
    let b = TypeId::of::<B>();
    b == TypeId::of::<Cube<R, F, I, BT>>() || b == TypeId::of::<burn::backend::Autodiff<Cube<R, F, I, BT>>>()
}
