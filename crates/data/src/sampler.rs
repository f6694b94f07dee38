//! The order in which examples are trained on, the same on every rank and for every world size.
//!
//! Positions run over an endless sequence of epochs; each epoch is a seeded permutation of the
//! dataset (or file order). Optimizer step s takes positions [s*G, (s+1)*G), G =
//! micro_batch_size x grad_accum x world_size; within a step, micro-batch k of rank r takes the
//! `micro_batch_size` positions starting at s*G + (k*world_size + r)*micro_batch_size.
//!
//! A run's place in this sequence is a [`SamplerPosition`] (epoch, offset), saved with the train
//! state, so that a resumed run trains on exactly what an uninterrupted one would have.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::DataError;

#[derive(Debug, Clone)]
pub struct Sampler {
    len: usize,
    shuffle: bool,
    seed: u64,
    /// The permutation of the epoch last asked for.
    cached: Option<(u64, Vec<usize>)>,
}

/// Where a run stands in its data: the next position it trains on is `offset` in `epoch`, in
/// epochs of `epoch_len` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerPosition {
    pub epoch: u64,
    pub offset: u64,
    pub epoch_len: u64,
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

    /// The global position after this step, where the next one starts: save
    /// `sampler.position(slice.end())` with the train state.
    pub fn end(&self) -> u64 {
        (self.step + 1) * self.examples_per_step()
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

    /// The epoch and offset of a global position.
    pub fn position(&self, global: u64) -> SamplerPosition {
        let len = self.len as u64;
        SamplerPosition { epoch: global / len, offset: global % len, epoch_len: len }
    }

    /// The step to continue with from a position saved after a step (see [`StepSlice::end`]),
    /// for steps of `examples_per_step` positions.
    pub fn resume_step(&self, saved: SamplerPosition, examples_per_step: u64) -> Result<u64, DataError> {
        if saved.epoch_len != self.len as u64 {
            return Err(DataError::Position(format!(
                "it was saved with {} rows to an epoch, the dataset now has {}",
                saved.epoch_len, self.len
            )));
        }
        if saved.offset >= saved.epoch_len {
            return Err(DataError::Position(format!("offset {} is past the epoch's {} rows", saved.offset, saved.epoch_len)));
        }
        let global = saved.epoch * saved.epoch_len + saved.offset;
        if !global.is_multiple_of(examples_per_step) {
            return Err(DataError::Position(format!(
                "position {global} is not the start of a step of {examples_per_step} examples \
                 (micro_batch_size x grad_accum x world_size changed?)"
            )));
        }
        Ok(global / examples_per_step)
    }

    /// The dataset index trained on at global position `global`.
    pub fn example_at(&mut self, global: u64) -> usize {
        let SamplerPosition { epoch, offset, .. } = self.position(global);
        let offset = offset as usize;
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

    /// What each (step, rank, micro-batch) trains on, for `steps` steps.
    fn run(
        sampler: &mut Sampler,
        steps: std::ops::Range<u64>,
        micro_batch_size: usize,
        grad_accum: usize,
        world_size: usize,
    ) -> Vec<Vec<usize>> {
        let mut seen = Vec::new();
        for step in steps {
            for rank in 0..world_size {
                let slice = StepSlice { step, micro_batch_size, grad_accum, rank, world_size };
                for k in 0..grad_accum {
                    seen.push(slice.micro_batch_positions(k).map(|p| sampler.example_at(p)).collect());
                }
            }
        }
        seen
    }

    #[test]
    fn every_world_size_trains_each_example_once_per_epoch() {
        let len = 13;
        for shuffle in [false, true] {
            for world_size in 1..=4 {
                let mut sampler = Sampler::new(len, shuffle, 7);
                let (micro_batch_size, grad_accum) = (2, 3);
                let per_step = (micro_batch_size * grad_accum * world_size) as u64;
                let mut by_epoch = vec![Vec::new(); 3];
                let mut positions = Vec::new();
                for step in 0..(3 * len as u64).div_ceil(per_step) {
                    for rank in 0..world_size {
                        let slice = StepSlice { step, micro_batch_size, grad_accum, rank, world_size };
                        for k in 0..grad_accum {
                            for p in slice.micro_batch_positions(k) {
                                let epoch = sampler.position(p).epoch as usize;
                                if epoch < 3 {
                                    by_epoch[epoch].push(sampler.example_at(p));
                                }
                                positions.push(p);
                            }
                        }
                    }
                }
                positions.sort();
                assert_eq!(positions, (0..positions.len() as u64).collect::<Vec<_>>(), "ranks overlap or leave gaps");
                for (epoch, mut examples) in by_epoch.into_iter().enumerate() {
                    examples.sort();
                    assert_eq!(examples, (0..len).collect::<Vec<_>>(), "world {world_size} epoch {epoch} shuffle {shuffle}");
                }
            }
        }
    }

    #[test]
    fn shuffled_epochs_are_seeded_permutations() {
        let order = |seed: u64, epoch: u64| {
            let mut s = Sampler::new(7, true, seed);
            (0..7).map(|i| s.example_at(epoch * 7 + i)).collect::<Vec<_>>()
        };
        for epoch in 0..3 {
            assert_eq!(order(3, epoch), order(3, epoch));
            let mut sorted = order(3, epoch);
            sorted.sort();
            assert_eq!(sorted, (0..7).collect::<Vec<_>>());
        }
        assert_ne!(order(3, 0), order(3, 1), "each epoch its own order");
        assert_ne!(order(3, 0), order(4, 0), "each seed its own order");
        let mut plain = Sampler::new(5, false, 0);
        assert_eq!((0..7).map(|p| plain.example_at(p)).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 0, 1]);
    }

    #[test]
    fn a_resumed_run_continues_exactly() {
        let (len, micro_batch_size, grad_accum, world_size) = (11, 2, 2, 3);
        let uninterrupted = run(&mut Sampler::new(len, true, 5), 0..9, micro_batch_size, grad_accum, world_size);

        let mut first = Sampler::new(len, true, 5);
        let mut resumed = run(&mut first, 0..4, micro_batch_size, grad_accum, world_size);
        let last = StepSlice { step: 3, micro_batch_size, grad_accum, rank: 0, world_size };
        let saved = serde_json::to_string(&first.position(last.end())).unwrap();
        assert_eq!(saved, r#"{"epoch":4,"offset":4,"epoch_len":11}"#);

        let mut second = Sampler::new(len, true, 5);
        let next = second.resume_step(serde_json::from_str(&saved).unwrap(), last.examples_per_step()).unwrap();
        assert_eq!(next, 4);
        resumed.extend(run(&mut second, next..9, micro_batch_size, grad_accum, world_size));
        assert_eq!(resumed, uninterrupted);
    }

    #[test]
    fn a_position_that_does_not_fit_is_refused() {
        let sampler = Sampler::new(11, true, 5);
        let at = |epoch, offset, epoch_len| SamplerPosition { epoch, offset, epoch_len };
        let refused = |p, per_step| sampler.resume_step(p, per_step).unwrap_err().to_string();
        assert!(refused(at(1, 2, 12), 13).contains("saved with 12 rows to an epoch, the dataset now has 11"));
        assert!(refused(at(1, 11, 11), 12).contains("offset 11 is past"));
        assert!(refused(at(1, 2, 11), 12).contains("position 13 is not the start of a step of 12"));
        assert_eq!(sampler.resume_step(at(1, 1, 11), 12).unwrap(), 1);
    }
}
