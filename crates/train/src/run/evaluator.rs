//! Eval during the run: the held-out examples' mean loss every `eval.every` steps and after the
//! last step.

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use shard_comm::{Collective, World};
use shard_data::BatchRules;
use shard_zero::Engine;

use crate::config::run_config::RunConfig;
use crate::data::run_data::EvalSet;

pub struct Evaluator {
    /// `eval.every` (0: only after the last step); none without an `[eval]` section.
    every: Option<u64>,
    total_steps: u64,
    set: Option<EvalSet>,
    world: World,
    micro_batch_size: usize,
    rules: BatchRules,
}

impl Evaluator {
    pub fn new(run: &RunConfig, set: Option<EvalSet>, total_steps: u64, world: World, rules: BatchRules) -> Self {
        let every = run.eval.as_ref().map(|e| e.every);
        Self { every, total_steps, set, world, micro_batch_size: run.train.micro_batch_size, rules }
    }

    /// Whether the eval is due once `step` steps are done.
    pub fn due(&self, step: u64) -> bool {
        self.every.is_some_and(|every| step == self.total_steps || (every > 0 && step.is_multiple_of(every)))
    }

    /// The eval loss after `step` steps, when it is due. Every rank must call it (the eval's
    /// forward passes gather the shards).
    pub fn maybe_eval<B: AutodiffBackend, C: Collective<B::InnerBackend>>(
        &self,
        engine: &mut Engine<B, C>,
        step: u64,
    ) -> Result<Option<f64>> {
        match &self.set {
            Some(set) if self.due(step) => {
                Ok(Some(engine.eval_loss(set.rank_batches(&self.world, self.micro_batch_size, self.rules))?.loss))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluator(every: Option<u64>, total_steps: u64) -> Evaluator {
        let rules = BatchRules { pad_id: 0, seq_len: 4, hidden_size: 8 };
        Evaluator { every, total_steps, set: None, world: World::single(), micro_batch_size: 1, rules }
    }

    fn due_steps(evaluator: &Evaluator) -> Vec<u64> {
        (1..=evaluator.total_steps).filter(|&step| evaluator.due(step)).collect()
    }

    #[test]
    fn due_every_n_steps_and_after_the_last() {
        assert_eq!(due_steps(&evaluator(Some(3), 10)), [3, 6, 9, 10]);
        assert_eq!(due_steps(&evaluator(Some(5), 10)), [5, 10], "the last step once, though also a multiple");
    }

    #[test]
    fn every_0_is_due_only_after_the_last_step() {
        assert_eq!(due_steps(&evaluator(Some(0), 10)), [10]);
    }

    #[test]
    fn never_due_without_an_eval_section() {
        assert_eq!(due_steps(&evaluator(None, 10)), Vec::<u64>::new());
    }
}
