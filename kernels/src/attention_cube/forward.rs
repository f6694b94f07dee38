//! The forward kernel: one cube per tile of queries of one (batch, head), one unit per query.
//! The cube walks the keys its queries may see, a tile at a time through shared memory, with an
//! online softmax in f32; it writes the output and each row's log-sum-exp.

use burn::tensor::{DType, Shape};
use burn_cubecl::{CubeRuntime, kernel::into_contiguous, ops::numeric::empty_device_dtype, tensor::CubeTensor};
use cubecl::prelude::*;

use super::geometry::{AttentionShape, DeviceLayout, layout_start};
use super::{KEY_TILE, QUERY_TILE};

/// `output` = softmax(q k^T * scale, over the visible keys) v; `lse` = the rows' log-sum-exp.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn attention_forward<F: Float, I: Int>(
    q: &Tensor<F>,
    k: &Tensor<F>,
    v: &Tensor<F>,
    first_key: &Tensor<I>,
    output: &mut Tensor<F>,
    lse: &mut Tensor<f32>,
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
    // Below every score that a visible key can have, and finite: WGSL has no -inf literal.
    let no_score = f32::new(-1.0e30);
    let seq = seq as usize;
    let unit = query_unit::<I>(first_key, seq, heads, groups, layouts, head_dim);
    let mut q_row = Array::<f32>::new(head_dim);
    let mut acc = Array::<f32>::new(head_dim);
    if unit.active {
        for c in 0..head_dim {
            q_row[c] = f32::cast_from(q[unit.q_start + unit.query * head_dim + c]);
        }
    }
    for c in 0..head_dim {
        acc[c] = 0.0;
    }
    let mut row_max = no_score;
    let mut row_sum = f32::new(0.0);

    let mut k_tile = SharedMemory::<f32>::new(key_tile * head_dim);
    let mut v_tile = SharedMemory::<f32>::new(key_tile * head_dim);
    let mut scores = Array::<f32>::new(key_tile);
    let mut tile_key = unit.keys_from;
    while tile_key < unit.keys_to {
        load_rows::<F>(k, v, &mut k_tile, &mut v_tile, unit.kv_start, tile_key, seq, head_dim, key_tile);
        sync_cube();

        let mut tile_max = no_score;
        for t in 0..key_tile {
            let key = tile_key + t;
            let mut score = no_score;
            if key >= unit.own_first_key && key <= unit.query {
                let mut dot = f32::new(0.0);
                for chunk in 0..head_dim / unroll {
                    #[unroll]
                    for u in 0..unroll {
                        let c = chunk * unroll + u;
                        dot += q_row[c] * k_tile[t * head_dim + c];
                    }
                }
                score = dot * scale;
            }
            scores[t] = score;
            tile_max = tile_max.max(score);
        }
        if tile_max > no_score {
            let new_max = row_max.max(tile_max);
            let correction = (row_max - new_max).exp();
            row_sum *= correction;
            for chunk in 0..head_dim / unroll {
                #[unroll]
                for u in 0..unroll {
                    let c = chunk * unroll + u;
                    acc[c] *= correction;
                }
            }
            for t in 0..key_tile {
                if scores[t] > no_score {
                    let p = (scores[t] - new_max).exp();
                    row_sum += p;
                    for chunk in 0..head_dim / unroll {
                        #[unroll]
                        for u in 0..unroll {
                            let c = chunk * unroll + u;
                            acc[c] += p * v_tile[t * head_dim + c];
                        }
                    }
                }
            }
            row_max = new_max;
        }
        sync_cube();
        tile_key += key_tile;
    }

    if unit.active {
        for c in 0..head_dim {
            output[unit.q_start + unit.query * head_dim + c] = F::cast_from(acc[c] / row_sum);
        }
        lse[unit.row * seq + unit.query] = row_max + row_sum.ln();
    }
}

/// A forward or dq unit's place: one unit per query of a tile of `CUBE_DIM_X` queries of one
/// (batch, head) `row` (batch * heads + head), the cube at (tile, row).
#[derive(CubeType, Clone, Copy)]
pub(super) struct QueryUnit {
    pub row: usize,
    pub query: usize,
    /// Whether the query is within the sequence (the last tile's units past it only help load).
    pub active: bool,
    /// Where the row's queries start in q, and its kv head in k and v.
    pub q_start: usize,
    pub kv_start: usize,
    /// The keys the tile's queries see: from its first query's first key to its last query (exclusive).
    pub keys_from: usize,
    pub keys_to: usize,
    /// The query's own first key (seq when inactive, so that it sees none).
    pub own_first_key: usize,
}

#[cube]
pub(super) fn query_unit<I: Int>(
    first_key: &Tensor<I>,
    seq: usize,
    heads: u32,
    groups: u32,
    layouts: u32,
    #[comptime] head_dim: usize,
) -> QueryUnit {
    let row = CUBE_POS_Y as usize;
    let tile_start = CUBE_POS_X as usize * CUBE_DIM_X as usize;
    let query = tile_start + UNIT_POS_X as usize;
    let active = query < seq;
    let layout_start = layout_start(row, heads, layouts, seq);
    let mut own_first_key = seq;
    if active {
        own_first_key = u32::cast_from(first_key[layout_start + query]) as usize;
    }
    QueryUnit {
        row,
        query,
        active,
        q_start: row * seq * head_dim,
        // heads = kv_heads * groups, so batch * kv_heads + head / groups = row / groups.
        kv_start: row / groups as usize * seq * head_dim,
        keys_from: u32::cast_from(first_key[layout_start + tile_start]) as usize,
        keys_to: (tile_start + CUBE_DIM_X as usize).min(seq),
        own_first_key,
    }
}

/// Rows `first..first + tile` of two [seq, head_dim] matrices starting at `start` into shared
/// memory as f32, the cube's units striding over the elements; rows past `seq` are left as they were.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn load_rows<F: Float>(
    a: &Tensor<F>,
    b: &Tensor<F>,
    a_tile: &mut SharedMemory<f32>,
    b_tile: &mut SharedMemory<f32>,
    start: usize,
    first: usize,
    seq: usize,
    #[comptime] head_dim: usize,
    #[comptime] tile: usize,
) {
    let mut at = UNIT_POS_X as usize;
    while at < tile * head_dim {
        if first + at / head_dim < seq {
            a_tile[at] = f32::cast_from(a[start + first * head_dim + at]);
            b_tile[at] = f32::cast_from(b[start + first * head_dim + at]);
        }
        at += CUBE_DIM_X as usize;
    }
}

/// The output [batch, heads, seq, head_dim] in q's dtype and the rows' log-sum-exp [batch, heads, seq] f32.
pub(super) fn forward<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    layout: &DeviceLayout<R>,
    scale: f32,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
    let shape = AttentionShape::of(&q, &k, layout);
    let (client, device) = (q.client.clone(), q.device.clone());
    let output = empty_device_dtype::<R>(client.clone(), device.clone(), q.meta.shape().clone(), q.dtype);
    let lse = empty_device_dtype::<R>(client.clone(), device, Shape::new([shape.batch, shape.heads, shape.seq]), DType::F32);
    let dtypes = [q.dtype.into(), layout.first_key.dtype.into()];
    attention_forward::launch::<R>(
        &client,
        shape.query_tiles(),
        CubeDim::new_1d(QUERY_TILE as u32),
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        layout.first_key.clone().into_tensor_arg(),
        output.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        shape.seq as u32,
        shape.heads as u32,
        shape.groups() as u32,
        layout.layouts as u32,
        scale,
        shape.head_dim,
        KEY_TILE,
        shape.unroll(),
        dtypes,
    );
    (output, lse)
}
