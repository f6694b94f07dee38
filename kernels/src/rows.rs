//! Row-wise ops over the last dimension, computed in f32 whatever the input's dtype (as
//! transformers upcasts the attention softmax and RMSNorm's statistics): on burn-flex, for f32
//! inputs, one pass each way (`rows_flex`); elsewhere burn's tensor ops, which are the reference.

use burn::tensor::{DType, Tensor, activation::softmax, backend::Backend};

use crate::{flex, rows_flex};

/// The softmax over the last dimension, in f32, returned in `x`'s dtype.
pub fn softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    in_f32(x, |x, kernel| if kernel { rows_flex::softmax_last(x) } else { softmax(x, D - 1) })
}

/// `x / sqrt(mean(x^2) + eps)` over the last dimension (RMSNorm before its weight), in f32,
/// returned in `x`'s dtype.
pub fn rms_normalize<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    in_f32(x, |x, kernel| if kernel { rows_flex::rms_normalize(x, eps) } else { rms_normalize_with_tensor_ops(x, eps) })
}

/// `op` on `x` cast to f32, told whether the one-pass kernel applies (`x` was f32 on burn-flex),
/// and its result cast back to `x`'s dtype.
fn in_f32<B: Backend, const D: usize>(x: Tensor<B, D>, op: impl FnOnce(Tensor<B, D>, bool) -> Tensor<B, D>) -> Tensor<B, D> {
    let dtype = x.dtype();
    if dtype == DType::F32 {
        return op(x, flex::f32_kernels_apply::<B>(dtype));
    }
    op(x.cast(DType::F32), false).cast(dtype)
}

fn rms_normalize_with_tensor_ops<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let inverse_rms = x.clone().square().mean_dim(D - 1).add_scalar(eps).sqrt().recip();
    x * inverse_rms
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    use super::*;

    type Ad = Autodiff<Flex>;

    /// `op` on burn-flex's kernels and as burn's tensor ops: the outputs and the input's
    /// gradients under a weighted sum agree within f32 rounding.
    fn assert_matches(kernel: impl Fn(Tensor<Ad, 3>) -> Tensor<Ad, 3>, tensor_ops: impl Fn(Tensor<Ad, 3>) -> Tensor<Ad, 3>) {
        let dims = [2, 3, 37];
        let n = dims.iter().product::<usize>();
        let input: Vec<f32> = (0..n).map(|i| ((i * 7919) % 113) as f32 / 13.0 - 4.0).collect();
        let weight: Vec<f32> = (0..n).map(|i| ((i * 104729) % 89) as f32 / 31.0 - 1.4).collect();
        let run = |op: &dyn Fn(Tensor<Ad, 3>) -> Tensor<Ad, 3>| {
            let x = Tensor::<Ad, 3>::from_data(TensorData::new(input.clone(), dims), &Default::default()).require_grad();
            let w = Tensor::<Ad, 3>::from_data(TensorData::new(weight.clone(), dims), &Default::default());
            let y = op(x.clone());
            let grads = (y.clone() * w).sum().backward();
            (y.into_data().into_vec::<f32>().unwrap(), x.grad(&grads).unwrap().into_data().into_vec::<f32>().unwrap())
        };
        let ((y, dx), (y_ops, dx_ops)) = (run(&kernel), run(&tensor_ops));
        let worst = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0, f32::max);
        assert!(worst(&y, &y_ops) < 1e-6, "outputs differ by {}", worst(&y, &y_ops));
        assert!(worst(&dx, &dx_ops) < 1e-5, "gradients differ by {}", worst(&dx, &dx_ops));
    }

    #[test]
    fn flex_softmax_matches_tensor_ops() {
        assert_matches(rows_flex::softmax_last, |x| softmax(x, 2));
    }

    #[test]
    fn flex_rms_normalize_matches_tensor_ops() {
        let eps = 1e-5;
        assert_matches(|x| rows_flex::rms_normalize(x, eps), |x| rms_normalize_with_tensor_ops(x, eps));
    }
}
