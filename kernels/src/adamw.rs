//! One AdamW update of flat f32 shards, with the exact semantics (and order of floating-point
//! operations) of `torch.optim.AdamW` (single-tensor path): [`AdamWCoefficients::element`] is the
//! specification; burn's tensor ops implement it on any backend, and on burn-flex one pass over
//! the four shards does (`adamw_flex`), to the same bits (see the tests). The same pass runs on
//! host slices for an offloaded optimizer ([`adamw_step_on_host`]).

use burn::tensor::{Tensor, backend::Backend};

use crate::{adamw_flex, flex};

/// The scalars of one update, computed in f64 as Python does, then used as f32 by the kernels.
#[derive(Debug, Clone, Copy)]
pub struct AdamWCoefficients {
    /// `clip_grad_norm_`'s factor; 1 when clipping is off (a multiplication by 1 is exact).
    clip: f32,
    decay: f32,
    lerp_weight: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bias_correction2_sqrt: f32,
    neg_step_size: f32,
    eps: f32,
}

impl AdamWCoefficients {
    /// Update `step` (counting from 1, as torch's `state["step"]`) at learning rate `lr`, the
    /// gradient scaled first by the clipping factor `clip` when there is one.
    pub fn new(betas: [f64; 2], eps: f64, weight_decay: f64, step: u64, lr: f64, clip: Option<f32>) -> Self {
        let [beta1, beta2] = betas;
        let bias_correction1 = 1.0 - beta1.powi(step as i32);
        let bias_correction2 = 1.0 - beta2.powi(step as i32);
        Self {
            clip: clip.unwrap_or(1.0),
            decay: (1.0 - lr * weight_decay) as f32,
            lerp_weight: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            neg_step_size: (-(lr / bias_correction1)) as f32,
            eps: eps as f32,
        }
    }

    /// torch's `lerp` kernel, m + w (g - m), or its mirrored form for w >= 0.5.
    fn lerp_is_mirrored(&self) -> bool {
        self.lerp_weight.abs() >= 0.5
    }

    /// The update of one element: (parameter, m, v) from (parameter, m, v, unclipped gradient).
    #[inline(always)]
    pub(crate) fn element(&self, p: f32, m: f32, v: f32, g: f32) -> (f32, f32, f32) {
        let g = g * self.clip;
        let p = p * self.decay;
        let m = if self.lerp_is_mirrored() { g - (g - m) * (1.0 - self.lerp_weight) } else { m + (g - m) * self.lerp_weight };
        let v = v * self.beta2 + g * self.one_minus_beta2 * g;
        let denom = v.sqrt() / self.bias_correction2_sqrt + self.eps;
        (p + m * self.neg_step_size / denom, m, v)
    }
}

/// A parameter shard, its moments and its gradient: what one update reads and writes.
#[derive(Debug)]
pub struct AdamWShards<B: Backend> {
    pub param: Tensor<B, 1>,
    pub m: Tensor<B, 1>,
    pub v: Tensor<B, 1>,
    pub grad: Tensor<B, 1>,
}

/// [`AdamWCoefficients::element`] over every element of `shards`; the returned gradient is
/// zeroed. On burn-flex one pass in place, elsewhere burn's tensor ops.
pub fn adamw_step<B: Backend>(coefficients: &AdamWCoefficients, shards: AdamWShards<B>) -> AdamWShards<B> {
    if flex::is_flex::<B>() { adamw_flex::step_in_one_pass(coefficients, shards) } else { step_with_tensor_ops(coefficients, shards) }
}

/// [`AdamWCoefficients::element`] over a parameter shard, its moments and its gradient in host
/// memory, in place, in one pass (the gradient is zeroed): the pass burn-flex's shards get, so
/// the same bits as [`adamw_step`] on the CPU.
pub fn adamw_step_on_host(coefficients: &AdamWCoefficients, param: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &mut [f32]) {
    adamw_flex::step_slices(coefficients, param, m, v, grad);
}

/// [`AdamWCoefficients::element`] as burn tensor ops, one pass each.
fn step_with_tensor_ops<B: Backend>(c: &AdamWCoefficients, shards: AdamWShards<B>) -> AdamWShards<B> {
    let AdamWShards { param, m, v, grad } = shards;
    let zeroed = grad.zeros_like();
    let grad = if c.clip == 1.0 { grad } else { grad.mul_scalar(c.clip) };
    let param = param.mul_scalar(c.decay);
    let m = if c.lerp_is_mirrored() {
        grad.clone() - (grad.clone() - m).mul_scalar(1.0 - c.lerp_weight)
    } else {
        m.clone() + (grad.clone() - m).mul_scalar(c.lerp_weight)
    };
    let v = v.mul_scalar(c.beta2) + grad.clone().mul_scalar(c.one_minus_beta2) * grad;
    let denom = v.clone().sqrt().div_scalar(c.bias_correction2_sqrt).add_scalar(c.eps);
    let param = param + m.clone().mul_scalar(c.neg_step_size) / denom;
    AdamWShards { param, m, v, grad: zeroed }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{DType, TensorData};

    use super::*;

    /// The one-pass kernel (on burn-flex's shards and on host slices) and the tensor ops give the
    /// same bits, over several steps, with and without clipping, for both forms of torch's lerp.
    #[test]
    fn one_pass_is_bit_identical_to_tensor_ops() {
        assert!(flex::is_flex::<Flex>(), "burn's Flex is burn-flex's: the one-pass kernel runs");
        let device = Default::default();
        let len = 3 * (1 << 16) + 17;
        let values = |seed: u32, scale: f32| -> Vec<f32> {
            (0..len as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 20011) as f32 / 20011.0 * scale - scale / 2.0).collect()
        };
        let tensor = |v: Vec<f32>| Tensor::<Flex, 1>::from_data(TensorData::new(v, [len]), (&device, DType::F32));
        let zeros = || Tensor::<Flex, 1>::zeros([len], (&device, DType::F32));
        let bits = |t: &Tensor<Flex, 1>| t.to_data().into_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (betas, clip) in [([0.9, 0.95], Some(0.37f32)), ([0.3, 0.999], None)] {
            let mut fused = AdamWShards { param: tensor(values(1, 2.0)), m: zeros(), v: zeros(), grad: zeros() };
            let mut ops = AdamWShards { param: tensor(values(1, 2.0)), m: zeros(), v: zeros(), grad: zeros() };
            let mut host = (values(1, 2.0), vec![0.0; len], vec![0.0; len]);
            for step in 1..=3u64 {
                fused.grad = tensor(values(step as u32 + 7, 1e-3));
                ops.grad = fused.grad.clone();
                let c = AdamWCoefficients::new(betas, 1e-8, 0.1, step, 1e-3, clip);
                let host_grad = fused.grad.to_data().into_vec::<f32>().unwrap();
                fused = adamw_step(&c, fused);
                ops = step_with_tensor_ops(&c, ops);
                let mut g = host_grad;
                adamw_step_on_host(&c, &mut host.0, &mut host.1, &mut host.2, &mut g);
                let host_bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(host_bits(&host.0), bits(&ops.param), "host parameters, step {step}, betas {betas:?}");
                assert_eq!(host_bits(&host.1), bits(&ops.m), "host m, step {step}");
                assert_eq!(host_bits(&host.2), bits(&ops.v), "host v, step {step}");
                assert!(g.iter().all(|g| *g == 0.0), "the host gradient is zeroed");
                assert_eq!(bits(&fused.param), bits(&ops.param), "parameters, step {step}, betas {betas:?}");
                assert_eq!(bits(&fused.m), bits(&ops.m), "m, step {step}");
                assert_eq!(bits(&fused.v), bits(&ops.v), "v, step {step}");
                assert!(fused.grad.to_data().iter::<f32>().all(|g| g == 0.0), "the gradient is zeroed");
            }
        }
    }
}
