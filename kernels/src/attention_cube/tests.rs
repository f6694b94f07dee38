//! The cube kernels on burn-wgpu (Mesa's lavapipe in CI) against the eager reference: the grid of
//! `attention::grid` (layouts, GQA groups, head sizes, lengths that are not multiples of the tiles
//! of 32 and 16), forward output and the gradients of q, k and v, within 1e-6 norm-relative.
//!
//! Without a Vulkan device the tests are skipped, except under `CI=true`, where they fail.

use std::sync::OnceLock;

use burn::backend::wgpu::{WgpuDevice, WgpuRuntime, graphics::AutoGraphicsApi, init_setup};
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use burn_cubecl::CubeBackend;

use super::serves;
use crate::attention::{AttentionLayout, eager_attention, fused_attention, grid};

type Wgpu = CubeBackend<WgpuRuntime, f32, i32, u32>;

/// The Vulkan device, set up once per process (its first use must be `init_setup`); `None` when
/// this machine has none, which fails under `CI=true`.
fn vulkan_device() -> Option<WgpuDevice> {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    let present = *PRESENT
        .get_or_init(|| std::panic::catch_unwind(|| init_setup::<AutoGraphicsApi>(&WgpuDevice::DefaultDevice, Default::default())).is_ok());
    if present {
        return Some(WgpuDevice::DefaultDevice);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but burn-wgpu found no Vulkan device: install mesa-vulkan-drivers libvulkan1"
    );
    eprintln!("skipped: no Vulkan device on this machine (install mesa-vulkan-drivers libvulkan1 for lavapipe)");
    None
}

#[test]
fn the_cube_kernels_serve_burn_wgpu_and_autodiff_over_it() {
    assert!(serves::<Wgpu>() && serves::<Autodiff<Wgpu>>());
    assert!(!serves::<Flex>() && !serves::<Autodiff<Flex>>());
}

#[test]
fn fused_attention_on_wgpu_matches_eager_forward_and_gradients() {
    let Some(device) = vulkan_device() else { return };
    grid::assert_fused_matches_cpu_eager::<Autodiff<Wgpu>>(fused_attention, 1e-6, &device);
}

/// Without autodiff the forward kernel alone runs (GQA groups of 4, two examples, a window).
#[test]
fn fused_attention_on_plain_wgpu_matches_eager() {
    let Some(device) = vulkan_device() else { return };
    let layout = AttentionLayout::new(70, &[vec![0, 40]], Some(16));
    let random = |heads| Tensor::<Wgpu, 4>::random([1, heads, 70, 64], Distribution::Normal(0.0, 1.0), &device);
    let (q, k, v) = (random(4), random(1), random(1));
    let (fused, eager) = (fused_attention(q.clone(), k.clone(), v.clone(), &layout, 0.125), eager_attention(q, k, v, &layout, 0.125));
    let difference = ((fused - eager.clone()).powi_scalar(2).sum() / eager.powi_scalar(2).sum()).sqrt().into_scalar();
    assert!(difference <= 1e-6, "the output differs by {difference:e} (norm-relative)");
}

/// Which side is wrong for GQA dk: the fused kernels and the eager reference on burn-flex, each
/// against a naive f64 computation on the host (heads 4/1, seq 200, causal).
#[test]
fn gqa_dk_against_a_naive_host_reference() {
    use burn::tensor::TensorData;
    use burn::tensor::backend::AutodiffBackend;
    let Some(device) = vulkan_device() else { return };
    let (heads, kv_heads, seq, dim) = (4usize, 1usize, 200usize, 128usize);
    let groups = heads / kv_heads;
    let scale = 1.0 / (dim as f64).sqrt();
    // The grid's generator (attention::grid::values): xorshift, uniform in [-2, 2).
    let values = |n: usize, seed: u64| -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    };
    let (qv, kv, vv, wv) =
        (values(heads * seq * dim, 1), values(kv_heads * seq * dim, 2), values(kv_heads * seq * dim, 3), values(heads * seq * dim, 4));
    let layout = AttentionLayout::new(seq, &[vec![0]], Some(70));
    fn grads<B: AutodiffBackend>(
        f: fn(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, &AttentionLayout, f64) -> Tensor<B, 4>,
        d: &B::Device,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        w: &[f32],
        qd: [usize; 4],
        kd: [usize; 4],
        layout: &AttentionLayout,
        scale: f64,
    ) -> [Vec<f32>; 3] {
        let t = |x: &[f32], dims: [usize; 4]| Tensor::<B, 4>::from_data(TensorData::new(x.to_vec(), dims), d);
        let (q, k, v) = (t(q, qd).require_grad(), t(k, kd).require_grad(), t(v, kd).require_grad());
        let out = f(q.clone(), k.clone(), v.clone(), layout, scale);
        let g = (out * t(w, qd)).sum().backward();
        let r = |x: Tensor<B::InnerBackend, 4>| x.into_data().into_vec::<f32>().unwrap();
        [r(q.grad(&g).unwrap()), r(k.grad(&g).unwrap()), r(v.grad(&g).unwrap())]
    }
    let (qd, kd) = ([1, heads, seq, dim], [1, kv_heads, seq, dim]);
    let fused = grads::<Autodiff<Wgpu>>(fused_attention, &device, &qv, &kv, &vv, &wv, qd, kd, &layout, scale);
    let eager = grads::<Autodiff<Flex>>(eager_attention, &Default::default(), &qv, &kv, &vv, &wv, qd, kd, &layout, scale);
    // Naive f64.
    let (mut dq, mut dk, mut dv) = (vec![0f64; qv.len()], vec![0f64; kv.len()], vec![0f64; vv.len()]);
    for h in 0..heads {
        let kh = h / groups;
        let qa = |i: usize, c: usize| f64::from(qv[(h * seq + i) * dim + c]);
        let wa = |i: usize, c: usize| f64::from(wv[(h * seq + i) * dim + c]);
        let ka = |j: usize, c: usize| f64::from(kv[(kh * seq + j) * dim + c]);
        let va = |j: usize, c: usize| f64::from(vv[(kh * seq + j) * dim + c]);
        for i in 0..seq {
            let from = layout.first_key[i] as usize;
            let s: Vec<f64> = (from..=i).map(|j| scale * (0..dim).map(|c| qa(i, c) * ka(j, c)).sum::<f64>()).collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
            let dp: Vec<f64> = (from..=i).map(|j| (0..dim).map(|c| wa(i, c) * va(j, c)).sum::<f64>()).collect();
            let delta: f64 = (0..p.len()).map(|j| p[j] * dp[j]).sum();
            for jj in 0..p.len() {
                let j = from + jj;
                let ds = p[jj] * (dp[jj] - delta);
                for c in 0..dim {
                    dq[(h * seq + i) * dim + c] += scale * ds * ka(j, c);
                    dk[(kh * seq + j) * dim + c] += scale * ds * qa(i, c);
                    dv[(kh * seq + j) * dim + c] += p[jj] * wa(i, c);
                }
            }
        }
    }
    let rel = |a: &[f32], b: &[f64]| {
        let d: f64 = a.iter().zip(b).map(|(&a, &b)| (f64::from(a) - b).powi(2)).sum();
        (d / b.iter().map(|b| b * b).sum::<f64>()).sqrt()
    };
    let per_key = |a: &[f32]| (0..seq).filter(|&j| rel(&a[j * dim..(j + 1) * dim], &dk[j * dim..(j + 1) * dim]) > 1e-4).count();
    eprintln!(
        "NAIVE fused dq {:e} dk {:e} dv {:e} (dk keys off {}); flex eager dq {:e} dk {:e} dv {:e} (dk keys off {})",
        rel(&fused[0], &dq),
        rel(&fused[1], &dk),
        rel(&fused[2], &dv),
        per_key(&fused[1]),
        rel(&eager[0], &dq),
        rel(&eager[1], &dk),
        rel(&eager[2], &dv),
        per_key(&eager[1])
    );
    assert!(rel(&fused[1], &dk) < 1e-5 && rel(&fused[2], &dv) < 1e-5, "the fused dk/dv are off the naive reference");
}
