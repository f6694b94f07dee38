//! torch's CPU `mean` of an f32 vector, in torch's order of additions. bitsandbytes' double
//! quantization subtracts `absmax.mean()` from every absmax, so that mean must be torch's to the
//! last bit. torch sums with a cascade of partial sums (`cascade_sum` in ATen's SumKernel.cpp),
//! over 8 SIMD lanes (its sum kernel is not built for AVX-512, so x86 CPUs with and without it
//! agree), and splits vectors of 32,768 elements or more between its threads: the result depends
//! on `torch.get_num_threads()`, which [`TorchReduction`] names.

/// How the torch that made (or is to match) a checkpoint reduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TorchReduction {
    /// `torch.get_num_threads()`.
    pub threads: usize,
}

impl Default for TorchReduction {
    /// One thread.
    fn default() -> Self {
        Self { threads: 1 }
    }
}

/// f32 lanes of the `Vectorized<float>` that torch's sum runs on (AVX2's, even on AVX-512 CPUs).
const LANES: usize = 8;

/// ATen's `internal::GRAIN_SIZE`: reductions of fewer elements stay on one thread.
const GRAIN_SIZE: usize = 32_768;

impl TorchReduction {
    /// `values.mean()`: the sum divided by the count, in f32.
    pub fn mean(&self, values: &[f32]) -> f32 {
        self.sum(values) / values.len() as f32
    }

    /// `values.sum()`. Over several threads torch gives each a contiguous chunk (OpenMP's static
    /// split of `parallel_for`), then sums the per-thread results (`two_pass_reduction`).
    pub fn sum(&self, values: &[f32]) -> f32 {
        let n = values.len();
        if n < GRAIN_SIZE || self.threads == 1 {
            return cascade_sum(values);
        }
        let threads = self.threads.min(n.div_ceil(GRAIN_SIZE));
        let chunk = n.div_ceil(threads);
        let mut per_thread = vec![0.0f32; self.threads];
        for (slot, part) in per_thread.iter_mut().zip(values.chunks(chunk)) {
            *slot += cascade_sum(part);
        }
        cascade_sum(&per_thread)
    }
}

/// One thread's sum of a contiguous f32 row (`vectorized_inner_sum`): whole vectors through the
/// cascade lane by lane, then the scalar tail, then the lanes in order.
fn cascade_sum(values: &[f32]) -> f32 {
    if values.len() < LANES {
        return row_sum(values.len(), 1, |i| &values[i..i + 1])[0];
    }
    let vectors = values.len() / LANES;
    let lane_sums = row_sum(vectors, LANES, |v| &values[v * LANES..(v + 1) * LANES]);
    let mut total = 0.0f32;
    for x in &values[vectors * LANES..] {
        total += x;
    }
    for x in lane_sums {
        total += x;
    }
    total
}

/// ATen's `row_sum`: `size` items of `width` lanes in four interleaved cascades (item `4r + k` in
/// cascade `k`), the left-over items into cascade 0, then the four added in order.
fn row_sum<'a>(size: usize, width: usize, item: impl Fn(usize) -> &'a [f32]) -> Vec<f32> {
    const ILP: usize = 4;
    let rows = size / ILP;
    let mut partial = multi_row_sum(rows, ILP, width, |row, k| item(row * ILP + k));
    for i in rows * ILP..size {
        add_into(&mut partial[0], item(i));
    }
    let (first, rest) = partial.split_first_mut().expect("ILP cascades");
    for other in rest {
        add_into(first, other);
    }
    partial.swap_remove(0)
}

/// ATen's `multi_row_sum`: `nrows` sums over `size` rows, each through 4 levels of accumulators;
/// a level is added into the next one every `2^level_power` rows of the one below it, so only
/// partial sums of similar size meet.
fn multi_row_sum<'a>(size: usize, nrows: usize, width: usize, item: impl Fn(usize, usize) -> &'a [f32]) -> Vec<Vec<f32>> {
    const LEVELS: usize = 4;
    let level_power = 4.max(ceil_log2(size) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = vec![vec![vec![0.0f32; width]; nrows]; LEVELS];
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for (k, sum) in acc[0].iter_mut().enumerate() {
                add_into(sum, item(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            let (below, above) = acc.split_at_mut(j);
            for (lower, upper) in below[j - 1].iter_mut().zip(above[0].iter_mut()) {
                add_into(upper, lower);
                lower.fill(0.0);
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    for i in i..size {
        for (k, sum) in acc[0].iter_mut().enumerate() {
            add_into(sum, item(i, k));
        }
    }
    let (first, higher) = acc.split_first_mut().expect("LEVELS accumulators");
    for level in higher {
        for (sum, upper) in first.iter_mut().zip(level.iter()) {
            add_into(sum, upper);
        }
    }
    acc.swap_remove(0)
}

fn add_into(sum: &mut [f32], values: &[f32]) {
    for (s, v) in sum.iter_mut().zip(values) {
        *s += v;
    }
}

/// ATen's `CeilLog2`: 1 up to 2, then ceil(log2(x)).
fn ceil_log2(x: usize) -> usize {
    if x <= 2 { 1 } else { (usize::BITS - (x - 1).leading_zeros()) as usize }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_small_vectors_exactly() {
        let r = TorchReduction::default();
        assert_eq!(r.sum(&[]), 0.0);
        assert_eq!(r.sum(&[1.0, 2.0, 3.0]), 6.0);
        let ints: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        assert_eq!(r.sum(&ints), 499_500.0);
        assert_eq!(TorchReduction { threads: 3 }.mean(&vec![0.5; 100_000]), 0.5);
    }

    #[test]
    fn ceil_log2_matches_aten() {
        assert_eq!([0, 1, 2, 3, 4, 5, 8, 9].map(ceil_log2), [1, 1, 1, 2, 2, 3, 3, 4]);
    }
}
