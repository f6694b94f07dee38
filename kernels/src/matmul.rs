//! The model's matrix products (linear layers, LoRA, the eager attention's scores and weighted
//! values), IEEE f32 by default as PyTorch's are.
//!
//! burn 0.21's matmul on its cubecl backends (burn-cuda, burn-wgpu) takes cubek's automatic
//! choice, whose tensor-core kernel reads f32 operands as TF32 on GPUs that have it (Ampere and
//! later): 10 bits of mantissa instead of 23. Unless TF32 is allowed (`runtime.tf32`, set once
//! per process with [`allow_tf32`]), f32 matmuls on those backends launch a kernel without tensor
//! cores instead (`matmul_cube`). Every other backend or dtype (burn-flex, bf16, f16) takes
//! burn's matmul as it is.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{DType, Tensor, backend::Backend};

use crate::matmul_cube;

/// `runtime.tf32`: whether f32 matmuls on the cubecl backends may use TF32 tensor cores.
static TF32_ALLOWED: AtomicBool = AtomicBool::new(false);

/// Allows (or not) TF32 in the f32 matmuls of this process, from the run config's
/// `runtime.tf32`; set once at start-up, before the model runs.
pub fn allow_tf32(allowed: bool) {
    TF32_ALLOWED.store(allowed, Ordering::Relaxed);
}

/// The kernel a matmul takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulPath {
    /// cubek's matmul without tensor cores, f32 throughout (`matmul_cube`).
    Ieee,
    /// burn's own matmul.
    Burn,
}

/// The path of a matmul of `dtype` tensors on `B` when TF32 is allowed or not: the IEEE
/// launch for f32 on a cubecl backend without TF32, burn's matmul elsewhere.
pub fn matmul_path<B: Backend>(dtype: DType, tf32: bool) -> MatmulPath {
    if dtype == DType::F32 && !tf32 && matmul_cube::serves::<B>() { MatmulPath::Ieee } else { MatmulPath::Burn }
}

/// What the f32 matmuls on `B` compute in, for the run's start-up line and summary: `"TF32"`
/// where a cubecl backend may use TF32 (on GPUs that have it), `"IEEE"` everywhere else (burn-flex
/// has no TF32, whatever `runtime.tf32` says).
pub fn f32_matmul_name<B: Backend>() -> &'static str {
    match matmul_path::<B>(DType::F32, false) {
        MatmulPath::Ieee if TF32_ALLOWED.load(Ordering::Relaxed) => "TF32",
        _ => "IEEE",
    }
}

/// `lhs` [.., m, k] times `rhs` [.., k, n], with the same leading dimensions: [.., m, n].
/// Differentiable under burn's Autodiff on every path.
pub fn matmul<B: Backend, const D: usize>(lhs: Tensor<B, D>, rhs: Tensor<B, D>) -> Tensor<B, D> {
    // The IEEE launch's backward sums no broadcast dimensions: the model's products never broadcast.
    let (l, r) = (lhs.dims(), rhs.dims());
    assert_eq!(l[..D - 2], r[..D - 2], "matmul of {l:?} and {r:?}: the leading dimensions differ");
    match matmul_path::<B>(lhs.dtype(), TF32_ALLOWED.load(Ordering::Relaxed)) {
        MatmulPath::Ieee => matmul_cube::ieee_matmul(lhs, rhs),
        MatmulPath::Burn => lhs.matmul(rhs),
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};

    use super::*;

    /// burn-flex has no TF32 and no IEEE launch of its own: burn's matmul, in every dtype.
    #[test]
    fn burn_flex_takes_burns_matmul() {
        for dtype in [DType::F32, DType::BF16] {
            for tf32 in [false, true] {
                assert_eq!(matmul_path::<Flex>(dtype, tf32), MatmulPath::Burn);
                assert_eq!(matmul_path::<Autodiff<Flex>>(dtype, tf32), MatmulPath::Burn);
            }
        }
        assert_eq!(f32_matmul_name::<Autodiff<Flex>>(), "IEEE");
    }
}

/// On burn-wgpu (lavapipe in CI: no tensor cores, so TF32 and IEEE give the same numbers there and
/// only the routing and the launch can be checked): the dispatch, and the IEEE launch's output and
/// gradients against burn-flex's matmul.
#[cfg(all(test, feature = "wgpu"))]
mod wgpu_tests {
    use burn::backend::{Autodiff, Flex, Wgpu};
    use burn::tensor::TensorData;

    use super::*;
    use crate::attention::grid::{norm_relative, values};

    type Cube = Wgpu<f32, i32, u32>;

    /// f32 on burn-wgpu (and autodiff over it) takes the IEEE launch unless TF32 is allowed;
    /// another dtype takes burn's matmul.
    #[test]
    fn f32_on_burn_wgpu_takes_the_ieee_launch_unless_tf32_is_allowed() {
        assert_eq!(matmul_path::<Cube>(DType::F32, false), MatmulPath::Ieee);
        assert_eq!(matmul_path::<Autodiff<Cube>>(DType::F32, false), MatmulPath::Ieee);
        assert_eq!(matmul_path::<Autodiff<Cube>>(DType::F32, true), MatmulPath::Burn);
        assert_eq!(matmul_path::<Autodiff<Cube>>(DType::F16, false), MatmulPath::Burn);
    }

    /// How an operand is laid out: stored as its shape, or stored transposed (its last two
    /// dimensions swapped) and viewed back, a strided view as the model's `weight.transpose()`.
    #[derive(Debug, Clone, Copy)]
    enum Layout {
        Stored,
        Transposed,
    }

    /// lhs · rhs on backend A through `op`, and the gradients of both under a weighted sum of
    /// the product, as f32 vectors.
    fn run<A: burn::tensor::backend::AutodiffBackend>(
        op: fn(Tensor<A, 3>, Tensor<A, 3>) -> Tensor<A, 3>,
        dims: ([usize; 3], [usize; 3]),
        layouts: (Layout, Layout),
        device: &A::Device,
    ) -> [Vec<f32>; 3] {
        let operand = |[b, r, c]: [usize; 3], layout, seed| {
            let stored = match layout {
                Layout::Stored => [b, r, c],
                Layout::Transposed => [b, c, r],
            };
            let t = Tensor::<A, 3>::from_data(TensorData::new(values(b * r * c, seed), stored), device);
            let t = match layout {
                Layout::Stored => t,
                Layout::Transposed => t.swap_dims(1, 2),
            };
            t.require_grad()
        };
        let (lhs, rhs) = (operand(dims.0, layouts.0, 1), operand(dims.1, layouts.1, 2));
        let out = op(lhs.clone(), rhs.clone());
        let [b, m, _] = dims.0;
        let n = dims.1[2];
        let weights = Tensor::<A, 3>::from_data(TensorData::new(values(b * m * n, 3), [b, m, n]), device);
        let grads = (out.clone() * weights).sum().backward();
        let f32s = |t: Tensor<A::InnerBackend, 3>| t.into_data().into_vec::<f32>().unwrap();
        [f32s(out.inner()), f32s(lhs.grad(&grads).unwrap()), f32s(rhs.grad(&grads).unwrap())]
    }

    /// Batched, with transposed (strided) operands, and with sizes no tile divides: the IEEE
    /// launch's product and both gradients (its own backward) agree with burn-flex's matmul.
    #[test]
    fn the_ieee_launch_and_its_backward_match_burn_flex() {
        use Layout::{Stored, Transposed};
        let cases = [
            // One matrix, a linear layer's x [tokens, in] · Wᵀ with W stored [out, in].
            (([1, 37, 50], [1, 50, 29]), (Stored, Transposed)),
            // Batched, both stored.
            (([3, 17, 64], [3, 64, 33]), (Stored, Stored)),
            // The attention's q · kᵀ and odd sizes.
            (([4, 67, 19], [4, 19, 67]), (Stored, Transposed)),
            // A transposed lhs (the backward's Aᵀ · dC) and a single row.
            (([2, 1, 129], [2, 129, 7]), (Transposed, Stored)),
            (([2, 45, 3], [2, 3, 71]), (Transposed, Transposed)),
        ];
        let device = Default::default();
        for (dims, layouts) in cases {
            assert_eq!(matmul_path::<Autodiff<Cube>>(DType::F32, false), MatmulPath::Ieee);
            let got = run::<Autodiff<Cube>>(matmul, dims, layouts, &device);
            let want = run::<Autodiff<Flex>>(|a, b| a.matmul(b), dims, layouts, &Default::default());
            for (name, (got, want)) in ["product", "d lhs", "d rhs"].iter().zip(got.iter().zip(&want)) {
                let error = norm_relative(got, want);
                assert!(error < 1e-6, "{name} differs by {error:e} (norm-relative): {dims:?} {layouts:?}");
            }
        }
    }
}
