//! AdamW and gradient clipping on flat f32 shards, with the exact semantics (and order of
//! floating-point operations) of `torch.optim.AdamW` (single-tensor path) and
//! `torch.nn.utils.clip_grad_norm_`.

use rayon::prelude::*;

/// `torch.optim.AdamW` hyper-parameters; weight decay is decoupled and applies to every element.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW {
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
}

/// Elements per parallel task: large enough that scheduling costs nothing.
const CHUNK: usize = 1 << 16;

impl AdamW {
    /// One update of `param` in place; `step` counts from 1, as torch's `state["step"]`.
    pub fn update(&self, step: u64, lr: f64, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
        let [beta1, beta2] = self.betas;
        // Scalars are computed in f64 as Python does, then used as f32 by the kernels.
        let decay = (1.0 - lr * self.weight_decay) as f32;
        let bias_correction1 = 1.0 - beta1.powi(step as i32);
        let bias_correction2 = 1.0 - beta2.powi(step as i32);
        let neg_step_size = (-(lr / bias_correction1)) as f32;
        let bias_correction2_sqrt = bias_correction2.sqrt() as f32;
        let (lerp_weight, beta2, one_minus_beta2, eps) = ((1.0 - beta1) as f32, beta2 as f32, (1.0 - beta2) as f32, self.eps as f32);
        param
            .par_chunks_mut(CHUNK)
            .zip(grad.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for i in 0..p.len() {
                    p[i] *= decay;
                    m[i] = lerp(m[i], g[i], lerp_weight);
                    v[i] = v[i] * beta2 + one_minus_beta2 * g[i] * g[i];
                    let denom = v[i].sqrt() / bias_correction2_sqrt + eps;
                    p[i] += neg_step_size * m[i] / denom;
                }
            });
    }
}

/// torch's `lerp` kernel: start + weight * (end - start), or the mirrored form for weight >= 0.5.
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 { start + weight * (end - start) } else { end - (end - start) * (1.0 - weight) }
}

/// Sum of squares (in f64) of a gradient shard: the local part of the global norm.
pub fn sum_of_squares(grad: &[f32]) -> f64 {
    grad.par_chunks(CHUNK).map(|c| c.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>()).sum()
}

/// `clip_grad_norm_`'s factor: max_norm / (norm + 1e-6), clamped to at most 1 (in f32, as torch).
/// `None` when clipping is off (max_norm = 0).
pub fn clip_factor(total_norm: f64, max_norm: f64) -> Option<f32> {
    (max_norm > 0.0).then(|| (max_norm as f32 / (total_norm as f32 + 1e-6)).min(1.0))
}

pub fn scale(grad: &mut [f32], factor: f32) {
    grad.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|g| *g *= factor));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two steps worked by hand with torch's formulas in f64 (differences stay at f32 rounding).
    #[test]
    fn matches_torch_formula() {
        let opt = AdamW { betas: [0.9, 0.95], eps: 1e-8, weight_decay: 0.1 };
        let (mut p, mut m, mut v) = (vec![0.5f32], vec![0f32], vec![0f32]);
        let (mut pe, mut me, mut ve) = (0.5f64, 0f64, 0f64);
        for (step, g) in [(1u64, 0.2f64), (2, -0.1)] {
            opt.update(step, 1e-2, &mut p, &[g as f32], &mut m, &mut v);
            pe *= 1.0 - 1e-2 * 0.1;
            me += 0.1 * (g - me);
            ve = ve * 0.95 + 0.05 * g * g;
            let denom = ve.sqrt() / (1.0 - 0.95f64.powi(step as i32)).sqrt() + 1e-8;
            pe -= 1e-2 / (1.0 - 0.9f64.powi(step as i32)) * me / denom;
            assert!((p[0] as f64 - pe).abs() < 1e-7, "step {step}: {} vs {pe}", p[0]);
        }
    }

    #[test]
    fn clip_factor_is_torch_clamped() {
        assert_eq!(clip_factor(0.25, 0.5), Some(1.0));
        assert!((clip_factor(2.0, 0.5).unwrap() - 0.25).abs() < 1e-6);
        assert_eq!(clip_factor(2.0, 0.0), None);
    }
}
