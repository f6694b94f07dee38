//! Forward-only evaluation: the mean next-token loss over held-out batches, through the same
//! gathers and the same forward pass (`forward_layers`) as a training step, with no autodiff, no dropout and no change to any state.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, TensorData};
use shard_comm::{Collective, ReduceOp};
use shard_data::Batch;
use shard_model::{Head, LayerLora, LoraConfig, SequenceContext, cross_entropy_sum, predicting_positions};

use super::gather::GatherQueue;
use super::{Engine, EngineError};

/// What an evaluation measured, all ranks together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalReport {
    /// The sum of token losses over the target tokens of every rank's batches.
    pub loss: f64,
    pub target_tokens: u64,
}

impl<B: AutodiffBackend, C: Collective<B::InnerBackend>> Engine<B, C> {
    /// The mean next-token loss over every rank's `batches`. Every rank must pass the same number
    /// of batches (each one gathers every unit); a batch without target tokens only adds nothing.
    pub fn eval_loss(&mut self, batches: impl IntoIterator<Item = Batch>) -> Result<EvalReport, EngineError> {
        self.owner.debug_check("Engine::eval_loss");
        let mut sums = [0.0, 0.0];
        for batch in batches {
            sums[0] += self.forward_loss(&batch)?;
            sums[1] += batch.target_tokens() as f64;
        }
        self.comm.all_reduce_scalars(&mut sums, ReduceOp::Sum);
        let [loss_sum, target_tokens] = sums;
        Ok(EvalReport { loss: loss_sum / target_tokens.max(1.0), target_tokens: target_tokens as u64 })
    }

    /// This rank's sum of token losses over `batch`, unit by unit (each unit's gather started
    /// while the one before it computes, as in training).
    fn forward_loss(&mut self, batch: &Batch) -> Result<f64, EngineError> {
        let ids = TensorData::new(batch.input_ids.clone(), [batch.rows, batch.seq]);
        let dtype = self.settings.precision.compute.dtype();
        let ctx =
            SequenceContext::<B::InnerBackend>::new(&self.config, batch.seq, &batch.starts, &self.device, dtype, self.settings.attention);
        // The adapters as peft's eval mode applies them: without dropout.
        let lora = self.lora.clone().map(|config| LoraConfig { dropout: 0.0, ..config });
        let layer_lora = |_layer| lora.as_ref().map(|config| LayerLora { config, dropout_seed: 0 });
        let mut queue = GatherQueue::new((0..self.units.len()).collect());

        let x = self.forward_layers(&mut queue, ids, &ctx, &layer_lora, None)?;
        let gathered = self.next_gathered(&mut queue);
        let head = Head::from_weights(&self.config, &mut self.weights(&gathered))?;
        let loss = cross_entropy_sum(head.forward(predicting_positions(x)), &batch.labels).into_scalar().elem::<f64>();
        drop(head); // its weights are views of the gathered buffers
        self.release(gathered);
        Ok(loss)
    }
}
