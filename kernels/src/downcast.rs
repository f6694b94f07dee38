//! Code generic over the backend that has a path of its own for one concrete backend reaches that
//! backend's tensors through here, once it has checked (by `TypeId`) that B is that backend.

use std::any::Any;

use burn::tensor::{Tensor, backend::Backend};

/// `tensor` as a tensor of `T`, which must be `B` itself (checked).
pub(crate) fn same_backend<B: Backend, T: Backend, const D: usize>(tensor: Tensor<B, D>) -> Tensor<T, D> {
    let tensor: Box<dyn Any> = Box::new(tensor);
    *tensor.downcast::<Tensor<T, D>>().expect("the same backend")
}
