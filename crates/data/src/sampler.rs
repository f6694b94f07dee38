//! The order in which examples are trained on, the same on every rank and for every world size.
//!
//! Positions run over an endless sequence of epochs; each epoch is a seeded permutation of the
//! dataset (or file order). Optimizer step s takes positions [s*G, (s+1)*G), G = micro_batch_size
//! * grad_accum * world_size; within a step, micro-batch k of rank r takes the `micro_batch_size`
//! positions starting at s*G + (k*world_size + r)*micro_batch_size.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone)]
pub struct Sampler {
    len: usize,
    shuffle: bool,
    seed: u64,
    /// The permutation of the epoch last asked for.
    cached: Option<(u64, Vec<usize>)>,
}

/// The part of one optimizer step that one rank trains on.
#[derive(Debug, Clone, Copy)]
pub struct StepSlice {
    pub step: u64,
    pub micro_batch_size: usize,
    pub grad_accum: usize,
    pub rank: usize,
    pub world_size: usize,
}

impl StepSlice {
    pub fn examples_per_step(&self) -> u64 {
        (self.micro_batch_size * self.grad_accum * self.world_size) as u64
    }

    /// The global positions of micro-batch `k` of this rank.
    pub fn micro_batch_positions(&self, k: usize) -> std::ops::Range<u64> {
        let start = self.step * self.examples_per_step() + ((k * self.world_size + self.rank) * self.micro_batch_size) as u64;
        start..start + self.micro_batch_size as u64
    }
}

impl Sampler {
    pub fn new(len: usize, shuffle: bool, seed: u64) -> Self {
        assert!(len > 0, "a sampler needs at least one example");
        Self { len, shuffle, seed, cached: None }
    }

    /// (epoch, offset within the epoch) of a global position.
    pub fn position(&self, global: u64) -> (u64, usize) {
        (global / self.len as u64, (global % self.len as u64) as usize)
    }

    /// The dataset index trained on at global position `global`.
    pub fn example_at(&mut self, global: u64) -> usize {
        let (epoch, offset) = self.position(global);
        if !self.shuffle {
            return offset;
        }
        if self.cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.cached = Some((epoch, self.permutation(epoch)));
        }
        self.cached.as_ref().expect("filled above").1[offset]
    }

    fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        order.shuffle(&mut rng);
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_world_size_covers_each_step_once() {
        for world_size in 1..=4 {
            let mut sampler = Sampler::new(10, true, 7);
            for step in 0..3u64 {
                let mut seen = Vec::new();
                for rank in 0..world_size {
                    let slice = StepSlice { step, micro_batch_size: 2, grad_accum: 3 / world_size.min(3), rank, world_size };
                    for k in 0..slice.grad_accum {
                        seen.extend(slice.micro_batch_positions(k).map(|p| sampler.example_at(p)));
                    }
                }
                let g = (2 * (3 / world_size.min(3)) * world_size) as u64;
                let mut expected: Vec<usize> = (step * g..(step + 1) * g).map(|p| sampler.example_at(p)).collect();
                seen.sort();
                expected.sort();
                assert_eq!(seen, expected, "world {world_size} step {step}");
            }
        }
    }

    #[test]
    fn shuffled_epochs_are_permutations_and_seeded() {
        let mut a = Sampler::new(7, true, 3);
        let mut b = Sampler::new(7, true, 3);
        for epoch in 0..3u64 {
            let mut order: Vec<usize> = (0..7).map(|i| a.example_at(epoch * 7 + i)).collect();
            let again: Vec<usize> = (0..7).map(|i| b.example_at(epoch * 7 + i)).collect();
            assert_eq!(order, again);
            order.sort();
            assert_eq!(order, (0..7).collect::<Vec<_>>());
        }
        let mut plain = Sampler::new(5, false, 0);
        assert_eq!((0..7).map(|p| plain.example_at(p)).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 0, 1]);
    }
}
