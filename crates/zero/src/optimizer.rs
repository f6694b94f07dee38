//! AdamW and gradient clipping on flat f32 shards, as tensor ops on the shards' device, with the
//! exact semantics (and order of floating-point operations) of `torch.optim.AdamW`
//! (single-tensor path) and `torch.nn.utils.clip_grad_norm_`.

use burn::tensor::{Tensor, backend::Backend};
use rayon::prelude::*;

use shard_model::flex;

use crate::OptimState;

/// `torch.optim.AdamW` hyper-parameters; weight decay is decoupled and applies to every element.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    /// One update of `param` with `state.grad`, scaled first by the clipping factor `clip` when
    /// there is one; updates `state.m` and `state.v` and zeroes `state.grad`. `step` counts from
    /// 1, as torch's `state["step"]`. Returns the updated parameter. On burn-flex this is one
    /// pass over the four shards, with the same f32 operations in the same order as the tensor
    /// ops elsewhere (the same bits: see the tests).
    pub fn update<B: Backend>(
        &self,
        step: u64,
        lr: f64,
        clip: Option<f32>,
        param: Tensor<B, 1>,
        state: &mut OptimState<B>,
    ) -> Tensor<B, 1> {
        let coefficients = Coefficients::new(self, step, lr, clip);
        if flex::is_flex::<B>() {
            update_in_one_pass(&coefficients, param, state)
        } else {
            update_with_tensor_ops(&coefficients, param, state)
        }
    }
}

/// The scalars of one update, computed in f64 as Python does, then used as f32 by the kernels.
#[derive(Debug, Clone, Copy)]
struct Coefficients {
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

impl Coefficients {
    fn new(adamw: &AdamW, step: u64, lr: f64, clip: Option<f32>) -> Self {
        let [beta1, beta2] = adamw.betas;
        let bias_correction1 = 1.0 - beta1.powi(step as i32);
        let bias_correction2 = 1.0 - beta2.powi(step as i32);
        Self {
            clip: clip.unwrap_or(1.0),
            decay: (1.0 - lr * adamw.weight_decay) as f32,
            lerp_weight: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            neg_step_size: (-(lr / bias_correction1)) as f32,
            eps: adamw.eps as f32,
        }
    }

    /// torch's `lerp` kernel, m + w (g - m), or its mirrored form for w >= 0.5.
    fn lerp_is_mirrored(&self) -> bool {
        self.lerp_weight.abs() >= 0.5
    }

    /// The update of one element: (parameter, m, v) from (parameter, m, v, unclipped gradient).
    #[inline(always)]
    fn element(&self, p: f32, m: f32, v: f32, g: f32) -> (f32, f32, f32) {
        let g = g * self.clip;
        let p = p * self.decay;
        let m = if self.lerp_is_mirrored() { g - (g - m) * (1.0 - self.lerp_weight) } else { m + (g - m) * self.lerp_weight };
        let v = v * self.beta2 + g * self.one_minus_beta2 * g;
        let denom = v.sqrt() / self.bias_correction2_sqrt + self.eps;
        (p + m * self.neg_step_size / denom, m, v)
    }
}

/// [`Coefficients::element`] as burn tensor ops, one pass each.
fn update_with_tensor_ops<B: Backend>(c: &Coefficients, param: Tensor<B, 1>, state: &mut OptimState<B>) -> Tensor<B, 1> {
    let grad = take(&mut state.grad);
    state.grad = grad.zeros_like();
    let grad = if c.clip == 1.0 { grad } else { grad.mul_scalar(c.clip) };
    let param = param.mul_scalar(c.decay);
    let m = take(&mut state.m);
    let m = if c.lerp_is_mirrored() {
        grad.clone() - (grad.clone() - m).mul_scalar(1.0 - c.lerp_weight)
    } else {
        m.clone() + (grad.clone() - m).mul_scalar(c.lerp_weight)
    };
    let v = take(&mut state.v).mul_scalar(c.beta2) + grad.clone().mul_scalar(c.one_minus_beta2) * grad;
    let denom = v.clone().sqrt().div_scalar(c.bias_correction2_sqrt).add_scalar(c.eps);
    let param = param + m.clone().mul_scalar(c.neg_step_size) / denom;
    (state.m, state.v) = (m, v);
    param
}

/// [`Coefficients::element`] over burn-flex shards in place, in one pass (in chunks over the
/// rank's threads), zeroing the gradient as it goes.
fn update_in_one_pass<B: Backend>(c: &Coefficients, param: Tensor<B, 1>, state: &mut OptimState<B>) -> Tensor<B, 1> {
    const CHUNK: usize = 1 << 16;
    let mut tensors = [param, take(&mut state.m), take(&mut state.v), take(&mut state.grad)].map(flex::into_flex);
    {
        let [p, m, v, g] = tensors.each_mut().map(|t| flex::f32_elements_mut(t).expect("optimizer shards are contiguous f32"));
        p.par_chunks_mut(CHUNK).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK)).zip(g.par_chunks_mut(CHUNK)).for_each(
            |(((p, m), v), g)| {
                for (((p, m), v), g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g.iter_mut()) {
                    (*p, *m, *v) = c.element(*p, *m, *v, *g);
                    *g = 0.0;
                }
            },
        );
    }
    let [param, m, v, grad] = tensors.map(flex::from_flex);
    (state.m, state.v, state.grad) = (m, v, grad);
    param
}

/// Moves a tensor out of its slot (leaving an empty one), so that an op on it may reuse its
/// buffer in place.
pub fn take<B: Backend>(slot: &mut Tensor<B, 1>) -> Tensor<B, 1> {
    let empty = Tensor::empty([0], (&slot.device(), slot.dtype()));
    std::mem::replace(slot, empty)
}

/// Sums of squares of several gradient shards, as one small tensor (one read-back for the
/// global norm).
pub fn sums_of_squares<B: Backend>(grads: impl Iterator<Item = Tensor<B, 1>>) -> Option<Tensor<B, 1>> {
    let sums: Vec<Tensor<B, 1>> = grads.map(|g| g.square().sum()).collect();
    (!sums.is_empty()).then(|| Tensor::cat(sums, 0))
}

/// `clip_grad_norm_`'s factor: max_norm / (norm + 1e-6), clamped to at most 1 (in f32, as torch).
/// `None` when clipping is off (max_norm = 0).
pub fn clip_factor(total_norm: f64, max_norm: f64) -> Option<f32> {
    (max_norm > 0.0).then(|| (max_norm as f32 / (total_norm as f32 + 1e-6)).min(1.0))
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{DType, TensorData};

    use super::*;

    fn scalar(t: &Tensor<Flex, 1>) -> f32 {
        t.to_data().into_vec::<f32>().unwrap()[0]
    }

    /// Two steps worked by hand with torch's formulas in f64 (differences stay at f32 rounding).
    #[test]
    fn matches_torch_formula() {
        let device = Default::default();
        let one = |v: f32| Tensor::<Flex, 1>::from_data(TensorData::new(vec![v], [1]), (&device, DType::F32));
        let opt = AdamW { betas: [0.9, 0.95], eps: 1e-8, weight_decay: 0.1 };
        let mut p = one(0.5);
        let mut state = OptimState::<Flex>::zeros(1, &device);
        let (mut pe, mut me, mut ve) = (0.5f64, 0f64, 0f64);
        for (step, g) in [(1u64, 0.2f64), (2, -0.1)] {
            state.grad = one(g as f32);
            p = opt.update(step, 1e-2, None, p, &mut state);
            pe *= 1.0 - 1e-2 * 0.1;
            me += 0.1 * (g - me);
            ve = ve * 0.95 + 0.05 * g * g;
            let denom = ve.sqrt() / (1.0 - 0.95f64.powi(step as i32)).sqrt() + 1e-8;
            pe -= 1e-2 / (1.0 - 0.9f64.powi(step as i32)) * me / denom;
            assert!((scalar(&p) as f64 - pe).abs() < 1e-7, "step {step}: {} vs {pe}", scalar(&p));
        }
    }

    /// Gradients near 1e-8, where eps (1e-8) is as large as sqrt(v_hat) and sets the step size
    /// (a kernel that dropped eps, or added it before the bias correction, would move each
    /// parameter by a different 1e-3): five clipped steps against torch's formula in f64.
    #[test]
    fn gradients_near_eps_follow_the_f64_formula() {
        let device = Default::default();
        let one = |v: f32| Tensor::<Flex, 1>::from_data(TensorData::new(vec![v], [1]), (&device, DType::F32));
        let (lr, clip, eps) = (1e-2, 0.5f32, 1e-8);
        let opt = AdamW { betas: [0.9, 0.999], eps, weight_decay: 0.1 };
        let mut p = one(0.25);
        let mut state = OptimState::<Flex>::zeros(1, &device);
        let (mut pe, mut me, mut ve) = (0.25f64, 0f64, 0f64);
        for (step, g) in (1u64..).zip([1e-8f32, -3e-9, 2e-8, 7e-10, -1.5e-8]) {
            state.grad = one(g);
            p = opt.update(step, lr, Some(clip), p, &mut state);
            let g = g as f64 * clip as f64;
            pe *= 1.0 - lr * 0.1;
            me += 0.1 * (g - me);
            ve = ve * 0.999 + 0.001 * g * g;
            let v_hat_sqrt = ve.sqrt() / (1.0 - 0.999f64.powi(step as i32)).sqrt();
            assert!(v_hat_sqrt < 3.0 * eps, "step {step}: eps is a large part of the denominator");
            pe -= lr / (1.0 - 0.9f64.powi(step as i32)) * me / (v_hat_sqrt + eps);
            assert!((scalar(&p) as f64 - pe).abs() < 1e-7, "step {step}: parameter {} vs {pe}", scalar(&p));
            assert!((scalar(&state.m) as f64 - me).abs() <= 1e-6 * me.abs(), "step {step}: m {} vs {me}", scalar(&state.m));
            assert!((scalar(&state.v) as f64 - ve).abs() <= 1e-5 * ve, "step {step}: v {} vs {ve}", scalar(&state.v));
        }
    }

    /// The one-pass kernel and the tensor ops give the same bits, over several steps, with and
    /// without clipping, for both forms of torch's lerp.
    #[test]
    fn one_pass_is_bit_identical_to_tensor_ops() {
        assert!(flex::is_flex::<Flex>(), "burn's Flex is burn-flex's: the one-pass kernel runs");
        let device = Default::default();
        let len = 3 * (1 << 16) + 17;
        let values = |seed: u32, scale: f32| -> Vec<f32> {
            (0..len as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 20011) as f32 / 20011.0 * scale - scale / 2.0).collect()
        };
        let tensor = |v: Vec<f32>| Tensor::<Flex, 1>::from_data(TensorData::new(v, [len]), (&device, DType::F32));
        let bits = |t: &Tensor<Flex, 1>| t.to_data().into_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (betas, clip) in [([0.9, 0.95], Some(0.37f32)), ([0.3, 0.999], None)] {
            let opt = AdamW { betas, eps: 1e-8, weight_decay: 0.1 };
            let (mut fused_p, mut ops_p) = (tensor(values(1, 2.0)), tensor(values(1, 2.0)));
            let mut fused = OptimState::<Flex>::zeros(len, &device);
            let mut ops = OptimState::<Flex>::zeros(len, &device);
            for step in 1..=3u64 {
                fused.grad = tensor(values(step as u32 + 7, 1e-3));
                ops.grad = fused.grad.clone();
                let c = Coefficients::new(&opt, step, 1e-3, clip);
                fused_p = opt.update(step, 1e-3, clip, fused_p, &mut fused);
                ops_p = update_with_tensor_ops(&c, ops_p, &mut ops);
                assert_eq!(bits(&fused_p), bits(&ops_p), "parameters, step {step}, betas {betas:?}");
                assert_eq!(bits(&fused.m), bits(&ops.m), "m, step {step}");
                assert_eq!(bits(&fused.v), bits(&ops.v), "v, step {step}");
                assert!(fused.grad.to_data().iter::<f32>().all(|g| g == 0.0), "the gradient is zeroed");
            }
        }
    }

    #[test]
    fn clip_factor_is_torch_clamped() {
        assert_eq!(clip_factor(0.25, 0.5), Some(1.0));
        assert!((clip_factor(2.0, 0.5).unwrap() - 0.25).abs() < 1e-6);
        assert_eq!(clip_factor(2.0, 0.0), None);
    }
}
