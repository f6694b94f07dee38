//! The backward kernels (FlashAttention-2): the score tiles are recomputed from q, k and the
//! rows' log-sum-exp. dq per tile of queries, as the forward walks keys; dk and dv per tile of
//! keys, over the queries that see them and the group of query heads that read their kv head, so
//! that each gradient element has one writer and no atomics are needed.

use burn::tensor::{DType, Shape};
use burn_cubecl::{CubeRuntime, kernel::into_contiguous, ops::numeric::empty_device_dtype, tensor::CubeTensor};
use cubecl::prelude::*;

use super::forward::{load_rows, query_unit};
use super::geometry::{AttentionShape, DeviceLayout, layout_start};
use super::{KEY_TILE, QUERY_TILE};

/// What the forward kept, and the layout, for the backward.
#[derive(Debug, Clone)]
pub(super) struct Saved<R: CubeRuntime> {
    pub q: CubeTensor<R>,
    pub k: CubeTensor<R>,
    pub v: CubeTensor<R>,
    pub output: CubeTensor<R>,
    pub lse: CubeTensor<R>,
    pub layout: DeviceLayout<R>,
    pub scale: f32,
}

/// dq = scale * sum_j ds_ij k_j, with p_ij = exp(s_ij - lse_i) and ds_ij = p_ij (dO_i . v_j - delta_i);
/// first delta_i = dO_i . O_i (f32), written for the dk/dv kernel.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_backward_dq<F: Float, I: Int>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    output: &Tensor<F>,
    grad_output: &Tensor<F>,
    lse: &Tensor<f32>,
    first_key: &Tensor<I>,
    delta: &mut Tensor<f32>,
    grad_q: &mut Tensor<F>,
    seq: u32,
    heads: u32,
    groups: u32,
    layouts: u32,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] key_tile: usize,
    #[comptime] unroll: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let seq = seq as usize;
    let unit = query_unit::<I>(first_key, seq, heads, groups, layouts, head_dim);
    let mut q_row = Array::<f32>::new(head_dim);
    let mut grad_row = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    let mut row_lse = f32::new(0.0);
    let mut row_delta = f32::new(0.0);
    if unit.active {
        row_lse = lse[unit.row * seq + unit.query];
        for c in 0..head_dim {
            let at = unit.q_start + unit.query * head_dim + c;
            q_row[c] = f32::cast_from(q[at]);
            grad_row[c] = f32::cast_from(grad_output[at]);
            row_delta += grad_row[c] * f32::cast_from(output[at]);
        }
        delta[unit.row * seq + unit.query] = row_delta;
    }
    for c in 0..head_dim {
        acc[c] = 0.0;
    }

    let mut k_tile = SharedMemory::<f32>::new(key_tile * head_dim);
    let mut v_tile = SharedMemory::<f32>::new(key_tile * head_dim);
    let mut tile_key = unit.keys_from;
    while tile_key < unit.keys_to {
        load_rows::<F>(k, v, &mut k_tile, &mut v_tile, unit.kv_start, tile_key, seq, head_dim, key_tile);
        sync_cube();
        for t in 0..key_tile {
            let key = tile_key + t;
            if key >= unit.own_first_key && key <= unit.query {
                let mut score = f32::new(0.0);
                let mut grad_p = f32::new(0.0);
                for chunk in 0..head_dim / unroll {
                    #[unroll]
                    for u in 0..unroll {
                        let c = chunk * unroll + u;
                        score += q_row[c] * k_tile[t * head_dim + c];
                        grad_p += grad_row[c] * v_tile[t * head_dim + c];
                    }
                }
                let grad_score = (score * scale - row_lse).exp() * (grad_p - row_delta);
                for chunk in 0..head_dim / unroll {
                    #[unroll]
                    for u in 0..unroll {
                        let c = chunk * unroll + u;
                        acc[c] += grad_score * k_tile[t * head_dim + c];
                    }
                }
            }
        }
        sync_cube();
        tile_key += key_tile;
    }

    if unit.active {
        for c in 0..head_dim {
            grad_q[unit.q_start + unit.query * head_dim + c] = F::cast_from(acc[c] * scale);
        }
    }
}

/// dv_j = sum_i p_ij dO_i and dk_j = scale * sum_i ds_ij q_i over the queries i that see key j,
/// in every query head of key j's kv head: one unit per key, reading q, dO, lse and delta straight
/// from global memory (no shared memory), so that each gradient element has one writer.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_backward_dkdv<F: Float, I: Int>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    grad_output: &Tensor<F>,
    lse: &Tensor<f32>,
    delta: &Tensor<f32>,
    first_key: &Tensor<I>,
    last_query: &Tensor<I>,
    grad_k: &mut Tensor<F>,
    grad_v: &mut Tensor<F>,
    seq: u32,
    heads: u32,
    groups: u32,
    layouts: u32,
    scale: f32,
    #[comptime] head_dim: usize,
    #[comptime] unroll: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let seq = seq as usize;
    let kv_row = CUBE_POS_Y as usize; // batch * kv_heads + kv head
    let key = CUBE_POS_X as usize * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    if key < seq {
        let groups = groups as usize;
        // Every query head of this kv head is in the same batch row, so shares its layout.
        let layout_start = layout_start(kv_row * groups, heads, layouts, seq);
        let kv_start = kv_row * seq * head_dim;
        let queries_to = u32::cast_from(last_query[layout_start + key]) as usize + 1; // exclusive
        let mut k_row = Array::<f32>::new(head_dim);
        let mut v_row = Array::<f32>::new(head_dim);
        let mut grad_k_acc = Array::<f32>::new(head_dim);
        let mut grad_v_acc = Array::<f32>::new(head_dim);
        for c in 0..head_dim {
            grad_k_acc[c] = 0.0;
            grad_v_acc[c] = 0.0;
            k_row[c] = f32::cast_from(k[kv_start + key * head_dim + c]);
            v_row[c] = f32::cast_from(v[kv_start + key * head_dim + c]);
        }
        let mut head = 0;
        while head < groups {
            let row = kv_row * groups + head; // the query head's batch * heads + head
            let q_start = row * seq * head_dim;
            let mut query = key;
            while query < queries_to {
                if u32::cast_from(first_key[layout_start + query]) as usize <= key {
                    let at = q_start + query * head_dim;
                    let mut score = f32::new(0.0);
                    let mut grad_p = f32::new(0.0);
                    for chunk in 0..head_dim / unroll {
                        #[unroll]
                        for u in 0..unroll {
                            let c = chunk * unroll + u;
                            score += f32::cast_from(q[at + c]) * k_row[c];
                            grad_p += f32::cast_from(grad_output[at + c]) * v_row[c];
                        }
                    }
                    let p = (score * scale - lse[row * seq + query]).exp();
                    let grad_score = p * (grad_p - delta[row * seq + query]);
                    for chunk in 0..head_dim / unroll {
                        #[unroll]
                        for u in 0..unroll {
                            let c = chunk * unroll + u;
                            grad_v_acc[c] += p * f32::cast_from(grad_output[at + c]);
                            grad_k_acc[c] += grad_score * f32::cast_from(q[at + c]);
                        }
                    }
                }
                query += 1;
            }
            head += 1;
        }
        for c in 0..head_dim {
            grad_k[kv_start + key * head_dim + c] = F::cast_from(grad_k_acc[c] * scale);
            grad_v[kv_start + key * head_dim + c] = F::cast_from(grad_v_acc[c]);
        }
    }
}

/// dq, dk, dv for the output's gradient `grad_output`.
pub(super) fn gradients<R: CubeRuntime>(saved: Saved<R>, grad_output: CubeTensor<R>) -> [CubeTensor<R>; 3] {
    let Saved { q, k, v, output, lse, layout, scale } = saved;
    let grad_output = into_contiguous(grad_output);
    let shape = AttentionShape::of(&q, &k, &layout);
    let (client, device) = (q.client.clone(), q.device.clone());
    let empty_like =
        |tensor: &CubeTensor<R>| empty_device_dtype::<R>(client.clone(), device.clone(), tensor.meta.shape().clone(), tensor.dtype);
    let (grad_q, grad_k, grad_v) = (empty_like(&q), empty_like(&k), empty_like(&v));
    let delta = empty_device_dtype::<R>(client.clone(), device.clone(), Shape::new([shape.batch, shape.heads, shape.seq]), DType::F32);
    let dtypes = [q.dtype.into(), layout.first_key.dtype.into()];
    let sizes = (shape.seq as u32, shape.heads as u32, shape.groups() as u32, layout.layouts as u32);

    // Ordered on the device's stream: delta is written here before the dk/dv kernel reads it.
    attention_backward_dq::launch::<R>(
        &client,
        shape.query_tiles(),
        CubeDim::new_1d(QUERY_TILE as u32),
        q.clone().into_tensor_arg(),
        k.clone().into_tensor_arg(),
        v.clone().into_tensor_arg(),
        output.into_tensor_arg(),
        grad_output.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        layout.first_key.clone().into_tensor_arg(),
        delta.clone().into_tensor_arg(),
        grad_q.clone().into_tensor_arg(),
        sizes.0,
        sizes.1,
        sizes.2,
        sizes.3,
        scale,
        shape.head_dim,
        KEY_TILE,
        shape.unroll(),
        dtypes,
    );
    attention_backward_dkdv::launch::<R>(
        &client,
        shape.key_tiles(),
        CubeDim::new_1d(QUERY_TILE as u32),
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        grad_output.into_tensor_arg(),
        lse.into_tensor_arg(),
        delta.into_tensor_arg(),
        layout.first_key.into_tensor_arg(),
        layout.last_query.into_tensor_arg(),
        grad_k.clone().into_tensor_arg(),
        grad_v.clone().into_tensor_arg(),
        sizes.0,
        sizes.1,
        sizes.2,
        sizes.3,
        scale,
        shape.head_dim,
        shape.unroll(),
        dtypes,
    );
    [grad_q, grad_k, grad_v]
}
