//! Optimizer work in host memory: a step over host slices of a shard and its gradient
//! (AdamW8bit's: on burn-flex the tensors' own storage, elsewhere copies), and the gradient
//! norm's sum of squares of a shard an offloaded optimizer keeps on the host.

use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, ElementConversion, Tensor, TensorData};

use crate::flex;

/// The sum of the squares of `values`, in f32, as burn-flex sums a shard's squares on the device
/// (its own order of additions): an offloaded gradient's norm is then the same bits as the
/// device's on the CPU. Works on a copy.
pub fn sum_of_squares_on_host(values: &[f32]) -> f32 {
    let shard = Tensor::<Flex, 1>::from_data(TensorData::new(values.to_vec(), [values.len()]), (&Default::default(), DType::F32));
    shard.square().sum().into_scalar().elem()
}

/// Runs `update` on the f32 values of a parameter shard and its gradient shard, which is zero
/// afterwards; returns both. On burn-flex in place, elsewhere on copies read back to the host
/// (AdamW8bit's states live there).
pub fn update_on_host<B: Backend>(
    param: Tensor<B, 1>,
    grad: Tensor<B, 1>,
    device: &B::Device,
    update: impl FnOnce(&mut [f32], &[f32]),
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    if flex::is_flex::<B>() {
        let mut tensors = [param, grad].map(flex::into_flex);
        {
            let [params, grads] = tensors.each_mut().map(|t| flex::f32_elements_mut(t).expect("optimizer shards are contiguous f32"));
            update(params, grads);
            grads.fill(0.0);
        }
        let [param, grad] = tensors.map(flex::from_flex);
        return (param, grad);
    }
    let mut params = param.into_data().into_vec::<f32>().expect("an f32 master");
    let grads = grad.to_data().into_vec::<f32>().expect("an f32 gradient");
    update(&mut params, &grads);
    let len = params.len();
    (Tensor::from_data(TensorData::new(params, [len]), (device, DType::F32)), grad.zeros_like())
}
