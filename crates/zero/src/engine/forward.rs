//! The forward pass through the embedding and the decoder layers, without autodiff, unit by
//! unit: what a training step runs before its backward, and what an evaluation runs before its
//! loss.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use shard_comm::Collective;
use shard_model::{DecoderLayer, Embedding, LayerLora, SequenceContext};

use super::gather::GatherQueue;
use super::{Engine, EngineError};
use crate::memory::Category;

/// Each decoder layer's input, kept by a training step's forward for the backward's recompute.
pub(super) struct Checkpoints<T: Backend> {
    pub(super) inputs: Vec<Tensor<T, 3>>,
    /// Bytes of one input, counted in the ledger while it is kept.
    pub(super) bytes_each: usize,
}

impl<B: AutodiffBackend, C: Collective<B::InnerBackend>> Engine<B, C> {
    /// The last hidden state for `ids` [rows, seq]: the embedding and every decoder layer run
    /// without autodiff, each unit taken from `queue` (which starts the next one's gather). With
    /// `checkpoints`, each layer's input is kept there.
    pub(super) fn forward_layers<'l>(
        &mut self,
        queue: &mut GatherQueue<B::InnerBackend>,
        ids: TensorData,
        ctx: &SequenceContext<B::InnerBackend>,
        layer_lora: &dyn Fn(usize) -> Option<LayerLora<'l>>,
        mut checkpoints: Option<&mut Checkpoints<B::InnerBackend>>,
    ) -> Result<Tensor<B::InnerBackend, 3>, EngineError> {
        let embedding = self.next_gathered(queue);
        let mut x = Embedding::from_weights(&self.config, &mut self.weights(&embedding))?
            .forward(Tensor::<B::InnerBackend, 2, Int>::from_data(ids, &self.device));
        self.release(embedding);
        for layer in 0..self.config.num_hidden_layers {
            let gathered = self.next_gathered(queue);
            let block = DecoderLayer::from_weights(&self.config, layer, &mut self.weights(&gathered), layer_lora(layer))?;
            if let Some(checkpoints) = checkpoints.as_deref_mut() {
                self.memory.alloc(Category::Checkpoints, checkpoints.bytes_each);
                checkpoints.inputs.push(x.clone());
            }
            x = block.forward(x, ctx);
            self.release(gathered);
        }
        Ok(x)
    }
}
