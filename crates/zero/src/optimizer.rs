//! AdamW and gradient clipping on flat f32 shards, as tensor ops on the shards' device (or, with
//! an offloaded optimizer, one pass over host memory), with the exact semantics (and order of floating-point operations) of `torch.optim.AdamW`
//! (single-tensor path) and `torch.nn.utils.clip_grad_norm_`.

use burn::tensor::{Tensor, backend::Backend};
use shard_kernels::{AdamWCoefficients, AdamWShards, adamw_step, adamw_step_on_host, sum_of_squares_on_host};

use crate::OptimState;
use crate::unit::HostStates;

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
    /// ops elsewhere (the same bits: see `shard_kernels::adamw_step`).
    pub fn update<B: Backend>(
        &self,
        step: u64,
        lr: f64,
        clip: Option<f32>,
        param: Tensor<B, 1>,
        state: &mut OptimState<B>,
    ) -> Tensor<B, 1> {
        let coefficients = AdamWCoefficients::new(self.betas, self.eps, self.weight_decay, step, lr, clip);
        let shards = AdamWShards { param, m: take(&mut state.m), v: take(&mut state.v), grad: take(&mut state.grad) };
        let AdamWShards { param, m, v, grad } = adamw_step(&coefficients, shards);
        (state.m, state.v, state.grad) = (m, v, grad);
        param
    }

    /// [`AdamW::update`] on an offloaded part's states in host memory, in place: the same
    /// one-pass kernel on host slices, so the same bits as on burn-flex's shards.
    pub fn update_on_host(&self, step: u64, lr: f64, clip: Option<f32>, host: &mut HostStates) {
        let coefficients = AdamWCoefficients::new(self.betas, self.eps, self.weight_decay, step, lr, clip);
        let HostStates { master, grad, m, v } = host;
        adamw_step_on_host(&coefficients, master, m, v, grad);
    }
}

/// Moves a tensor out of its slot (leaving an empty one), so that an op on it may reuse its
/// buffer in place.
pub fn take<B: Backend>(slot: &mut Tensor<B, 1>) -> Tensor<B, 1> {
    let empty = Tensor::empty([0], (&slot.device(), slot.dtype()));
    std::mem::replace(slot, empty)
}

/// The sum of squares of each trained shard's gradient, in f32, where the gradient is: on the
/// device one small tensor of sums is read back; offloaded, on the host (the same bits on the CPU).
pub fn grad_sums_of_squares<'a, B: Backend>(optims: impl Iterator<Item = &'a OptimState<B>>) -> Vec<f32> {
    let (mut on_host, mut on_device) = (Vec::new(), Vec::new());
    for optim in optims {
        match &optim.host {
            Some(host) => on_host.push(sum_of_squares_on_host(&host.grad)),
            None => on_device.push(optim.grad.clone().square().sum()),
        }
    }
    assert!(on_host.is_empty() || on_device.is_empty(), "every trained part is offloaded, or none");
    if on_device.is_empty() { on_host } else { Tensor::cat(on_device, 0).into_data().into_vec::<f32>().expect("f32 sums") }
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

    #[test]
    fn clip_factor_is_torch_clamped() {
        assert_eq!(clip_factor(0.25, 0.5), Some(1.0));
        assert!((clip_factor(2.0, 0.5).unwrap() - 0.25).abs() < 1e-6);
        assert_eq!(clip_factor(2.0, 0.0), None);
    }
}
