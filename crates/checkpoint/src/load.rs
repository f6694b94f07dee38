//! Whole-model loading: every parameter of a checkpoint into named tensors on one device.

use burn::tensor::{Tensor, TensorData, backend::Backend};
use shard_model::{MistralConfig, Weights, all_params};

use crate::{CheckpointError, HfCheckpoint};

/// Checks the checkpoint against the config (one error lists every mismatch), then reads every
/// parameter into a flat tensor of the backend's float type on `device`.
pub fn load_weights<B: Backend>(ckpt: &HfCheckpoint, cfg: &MistralConfig, device: &B::Device) -> Result<Weights<B>, CheckpointError> {
    let specs = all_params(cfg);
    ckpt.check_params(&specs)?;
    let mut weights = Weights::default();
    for spec in &specs {
        let values = ckpt.read_f32(&spec.name)?;
        let data = TensorData::new(values, [spec.numel()]).convert::<B::FloatElem>();
        weights.insert(spec.name.clone(), Tensor::from_data(data, device));
    }
    Ok(weights)
}
