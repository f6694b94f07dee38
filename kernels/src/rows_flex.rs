//! Row-wise f32 ops on burn-flex as one pass each way: the attention softmax and RMSNorm's
//! normalization, both over the last dimension ([`crate::softmax_last`], [`crate::rms_normalize`]).
//!
//! As tensor ops each broadcasts a [.., 1] column of row statistics (the max and the sum of
//! the softmax, the inverse RMS) back over its rows, which burn-flex walks with its
//! element-by-element strided iterator, in forward and again in each op's backward; under
//! autodiff burn also splits the softmax into its four ops. Here a row is read once or twice
//! while in cache. Sums are in f64.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, unary};
use burn::backend::flex::{Flex, FlexTensor};
use burn::tensor::ops::ActivationOps;
use burn::tensor::{DType, Shape, Tensor, TensorData, backend::Backend};
use rayon::prelude::*;

use crate::flex;

/// The softmax over the last dimension: burn-flex's own kernel forward (as without autodiff),
/// and `p * (dy - sum(dy * p))` per row backward.
pub(crate) fn softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    flex::with_backward(x, Softmax, |x| {
        let probabilities = Flex::softmax(x, D - 1);
        (probabilities.clone(), probabilities)
    })
}

/// `x / sqrt(mean(x^2) + eps)` over the last dimension (RMSNorm before its weight).
pub(crate) fn rms_normalize<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    flex::with_backward(x, RmsNormalize, |x| {
        let (normalized, inverse_rms) = normalize(&x, eps);
        (normalized, (x, inverse_rms))
    })
}

/// A tensor's f32 values in row-major order, and its shape.
fn values(tensor: &FlexTensor) -> (FlexTensor, Shape) {
    assert_eq!(tensor.dtype(), DType::F32, "the row kernels take f32");
    (tensor.to_contiguous(), tensor.layout().shape().clone())
}

fn row_len(shape: &Shape) -> usize {
    shape[shape.num_dims() - 1]
}

/// The normalized rows and each row's inverse RMS.
fn normalize(x: &FlexTensor, eps: f64) -> (FlexTensor, Vec<f32>) {
    let (x, shape) = values(x);
    let x = x.as_slice::<f32>().expect("contiguous");
    let n = row_len(&shape);
    let mut out = vec![0f32; x.len()];
    let inverse_rms: Vec<f32> = out
        .par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .map(|(out, row)| {
            let mean_square = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n as f64;
            let r = (1.0 / (mean_square + eps).sqrt()) as f32;
            out.iter_mut().zip(row).for_each(|(o, &v)| *o = v * r);
            r
        })
        .collect();
    (FlexTensor::from_data(TensorData::new(out, shape)), inverse_rms)
}

#[derive(Debug)]
struct Softmax;

impl Backward<Flex, 1> for Softmax {
    /// The softmax's output.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (p, shape) = values(&ops.state);
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let (dy, _) = values(&grad);
            let (p, dy) = (p.as_slice::<f32>().expect("contiguous"), dy.as_slice::<f32>().expect("contiguous"));
            let n = row_len(&shape);
            let mut dx = vec![0f32; p.len()];
            dx.par_chunks_mut(n).zip(p.par_chunks(n)).zip(dy.par_chunks(n)).for_each(|((dx, p), dy)| {
                let dot = p.iter().zip(dy).map(|(&p, &g)| f64::from(p) * f64::from(g)).sum::<f64>() as f32;
                dx.iter_mut().zip(p).zip(dy).for_each(|((d, &p), &g)| *d = p * (g - dot));
            });
            FlexTensor::from_data(TensorData::new(dx, shape))
        });
    }
}

#[derive(Debug)]
struct RmsNormalize;

impl Backward<Flex, 1> for RmsNormalize {
    /// The input and each row's inverse RMS r.
    type State = (FlexTensor, Vec<f32>);

    /// y = x r with r = (mean(x^2) + eps)^-1/2: dx = r dy - x r^3 mean(dy x).
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, inverse_rms) = ops.state;
        let (x, shape) = values(&x);
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let (dy, _) = values(&grad);
            let (x, dy) = (x.as_slice::<f32>().expect("contiguous"), dy.as_slice::<f32>().expect("contiguous"));
            let n = row_len(&shape);
            let mut dx = vec![0f32; x.len()];
            dx.par_chunks_mut(n).zip(x.par_chunks(n)).zip(dy.par_chunks(n)).zip(inverse_rms.par_iter()).for_each(|(((dx, x), dy), &r)| {
                let mean = x.iter().zip(dy).map(|(&x, &g)| f64::from(x) * f64::from(g)).sum::<f64>() / n as f64;
                let c = (mean * f64::from(r).powi(3)) as f32;
                dx.iter_mut().zip(x).zip(dy).for_each(|((d, &x), &g)| *d = r * g - x * c);
            });
            FlexTensor::from_data(TensorData::new(dx, shape))
        });
    }
}
