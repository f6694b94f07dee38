//! What the kernels share: the tile sizes, the problem's shape, and the layout on the device.

use burn::tensor::{Int, Tensor, TensorData};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement, tensor::CubeTensor};
use cubecl::prelude::*;

use super::{QUERY_TILE, unroll};
use crate::attention::AttentionLayout;

/// The sizes of one call, read from q [batch, heads, seq, head_dim] and k [batch, kv_heads, seq, head_dim].
#[derive(Debug, Clone, Copy)]
pub(super) struct AttentionShape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub seq: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    pub fn of<R: CubeRuntime>(q: &CubeTensor<R>, k: &CubeTensor<R>, layout: &DeviceLayout<R>) -> Self {
        let [batch, heads, seq, head_dim] = q.meta.shape().dims::<4>();
        let kv_heads = k.meta.shape().dims::<4>()[1];
        assert!(heads % kv_heads == 0, "fused attention: {heads} query heads are not a multiple of {kv_heads} kv heads");
        assert_eq!(seq, layout.seq, "fused attention: the layout is for another sequence length");
        assert!(layout.layouts == 1 || layout.layouts == batch, "fused attention: {} layouts for a batch of {batch}", layout.layouts);
        Self { batch, heads, kv_heads, seq, head_dim }
    }

    /// The head_dim elements that one iteration of the kernels' inner loops handles: see [`unroll`].
    pub fn unroll(&self) -> usize {
        unroll(self.head_dim)
    }

    pub fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// One cube per tile of `QUERY_TILE` queries (x) of each (batch, head) (y).
    pub fn query_tiles(&self) -> CubeCount {
        CubeCount::Static(self.seq.div_ceil(QUERY_TILE) as u32, (self.batch * self.heads) as u32, 1)
    }

    /// One cube per tile of `QUERY_TILE` keys (x) of each (batch, kv head) (y).
    pub fn key_tiles(&self) -> CubeCount {
        CubeCount::Static(self.seq.div_ceil(QUERY_TILE) as u32, (self.batch * self.kv_heads) as u32, 1)
    }
}

/// An [`AttentionLayout`] on the device: each query's first key, and each key's last query (the
/// queries that see key j are first_key's contiguous range [j, last_query[j]]), [layouts * seq] ints.
#[derive(Debug, Clone)]
pub(super) struct DeviceLayout<R: CubeRuntime> {
    pub first_key: CubeTensor<R>,
    pub last_query: CubeTensor<R>,
    pub layouts: usize,
    pub seq: usize,
}

impl<R: CubeRuntime> DeviceLayout<R> {
    pub fn upload<F: FloatElement, I: IntElement, BT: BoolElement>(layout: &AttentionLayout, device: &R::Device) -> Self {
        let to_device = |values: Vec<i32>| {
            let tensor = Tensor::<CubeBackend<R, F, I, BT>, 1, Int>::from_data(TensorData::new(values, [layout.first_key.len()]), device);
            tensor.into_primitive()
        };
        Self {
            first_key: to_device(layout.first_key.clone()),
            last_query: to_device(last_queries(layout)),
            layouts: layout.layouts,
            seq: layout.seq,
        }
    }
}

/// For each key j of each layout, the last query i with first_key[i] <= j (first_key is nondecreasing).
fn last_queries(layout: &AttentionLayout) -> Vec<i32> {
    layout
        .first_key
        .chunks(layout.seq)
        .flat_map(|first_key| (0..layout.seq).map(|key| (first_key.partition_point(|&first| first as usize <= key) - 1) as i32))
        .collect()
}

/// Where the layout of query row `row` (batch * heads + head) starts in first_key and last_query.
#[cube]
pub(super) fn layout_start(row: usize, heads: u32, layouts: u32, seq: usize) -> usize {
    let mut layout = 0;
    if layouts > 1 {
        layout = row / heads as usize;
    }
    layout * seq
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two examples (starts 0 and 3) and a window of 2 over 5 positions.
    #[test]
    fn last_query_is_the_last_that_sees_each_key() {
        let layout = AttentionLayout::new(5, &[vec![0, 3]], Some(2));
        assert_eq!(layout.first_key, [0, 0, 1, 3, 3]);
        assert_eq!(last_queries(&layout), [1, 2, 2, 4, 4]);
    }
}
