//! Where a rank's initial shard values come from: a HF checkpoint or peft adapter file, read by
//! element range so that a rank reads only what it owns, or a random initialisation computed per
//! element from a counter, so that any rank can make its own slice and every world size gets the
//! same model.

use rayon::prelude::*;

use shard_checkpoint::{CheckpointError, HfCheckpoint, peft_name};
use shard_model::{ParamSpec, hash};

use crate::normal;
use crate::{FlatLayout, Nf4Source};

/// Initial parameter values by element range.
pub trait ParamSource {
    /// Appends elements `[start, start + len)` of the flattened `spec` to `out`.
    fn read(&self, spec: &ParamSpec, start: usize, len: usize, out: &mut Vec<f32>) -> Result<(), CheckpointError>;

    /// A QLoRA base: where its quantized projections are read as NF4 records (they are then not
    /// read through [`ParamSource::read`]).
    fn nf4(&self) -> Option<&dyn Nf4Source> {
        None
    }
}

impl ParamSource for HfCheckpoint {
    fn read(&self, spec: &ParamSpec, start: usize, len: usize, out: &mut Vec<f32>) -> Result<(), CheckpointError> {
        self.read_f32_range_into(&spec.name, start, len, out)
    }
}

/// A peft adapter file (`adapter_model.safetensors`), whose names carry peft's prefix.
pub struct PeftAdapters(pub HfCheckpoint);

impl PeftAdapters {
    /// Checks that the file holds exactly the adapters `specs` (by peft name and shape).
    pub fn check(&self, specs: &[ParamSpec]) -> Result<(), CheckpointError> {
        let names: Vec<String> = specs.iter().map(|s| peft_name(&s.name)).collect();
        self.0.check_tensors(names.iter().zip(specs).map(|(n, s)| (n.as_str(), s.shape.as_slice())))
    }
}

impl ParamSource for PeftAdapters {
    fn read(&self, spec: &ParamSpec, start: usize, len: usize, out: &mut Vec<f32>) -> Result<(), CheckpointError> {
        self.0.read_f32_range_into(&peft_name(&spec.name), start, len, out)
    }
}

/// HF's `_init_weights` for Mistral: RMSNorm weights 1, every other weight N(0, std).
pub struct RandomInit {
    pub seed: u64,
    pub std: f64,
}

impl ParamSource for RandomInit {
    fn read(&self, spec: &ParamSpec, start: usize, len: usize, out: &mut Vec<f32>) -> Result<(), CheckpointError> {
        if spec.name.ends_with("norm.weight") {
            out.extend(std::iter::repeat_n(1.0f32, len));
            return Ok(());
        }
        // Each value depends only on its index: drawn on all cores, the bits are those of a draw
        // in order (a 7B model's 7 billion values take minutes on one core).
        const VALUES_PER_TASK: usize = 1 << 16;
        let stream = hash::stream(self.seed, &spec.name);
        let first = out.len();
        out.resize(first + len, 0.0);
        out[first..].par_chunks_mut(VALUES_PER_TASK).enumerate().for_each(|(task, values)| {
            normal::fill(stream, (start + task * VALUES_PER_TASK) as u64, self.std, values);
        });
        Ok(())
    }
}

/// peft's default LoRA initialisation: A kaiming-uniform with a = sqrt(5), i.e. U(-b, b) with
/// b = 1 / sqrt(in_features); B zeros.
pub struct LoraInit {
    pub seed: u64,
}

impl ParamSource for LoraInit {
    fn read(&self, spec: &ParamSpec, start: usize, len: usize, out: &mut Vec<f32>) -> Result<(), CheckpointError> {
        if spec.name.ends_with("lora_B.weight") {
            out.extend(std::iter::repeat_n(0.0f32, len));
            return Ok(());
        }
        let bound = 1.0 / (spec.shape[1] as f64).sqrt();
        let stream = hash::stream(self.seed, &spec.name);
        out.extend((start..start + len).map(|i| (bound * (2.0 * hash::uniform(stream, i as u64) - 1.0)) as f32));
        Ok(())
    }
}

/// This rank's shard of a flat layout: its range, padding as zeros.
pub fn read_shard(source: &dyn ParamSource, layout: &FlatLayout, rank: usize) -> Result<Vec<f32>, CheckpointError> {
    let range = layout.shard_range(rank);
    let mut shard = Vec::with_capacity(range.len());
    for piece in layout.pieces(range.clone()) {
        debug_assert_eq!(shard.len(), piece.start_in_range);
        source.read(&layout.params[piece.param].0, piece.start_in_param, piece.len, &mut shard)?;
    }
    shard.resize(range.len(), 0.0);
    Ok(shard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normal::standard_normal;

    #[test]
    fn random_init_is_normal_and_independent_of_the_split() {
        let init = RandomInit { seed: 3, std: 0.02 };
        let spec = ParamSpec { name: "model.layers.0.mlp.up_proj.weight".into(), shape: vec![100, 100] };
        let mut whole = Vec::new();
        init.read(&spec, 0, 10_000, &mut whole).unwrap();
        let mut parts = Vec::new();
        init.read(&spec, 0, 4_000, &mut parts).unwrap();
        init.read(&spec, 4_000, 6_000, &mut parts).unwrap();
        assert_eq!(whole, parts);
        let mean = whole.iter().map(|&v| v as f64).sum::<f64>() / 1e4;
        let std = (whole.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 1e4).sqrt();
        assert!(mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3, "mean {mean} std {std}");

        let norm = ParamSpec { name: "model.norm.weight".into(), shape: vec![4] };
        let mut ones = Vec::new();
        init.read(&norm, 0, 4, &mut ones).unwrap();
        assert_eq!(ones, vec![1.0; 4]);
    }

    /// The parallel draw is the one-by-one draw, bit for bit, on any number of threads.
    #[test]
    fn random_init_has_the_same_bits_on_any_number_of_threads() {
        let init = RandomInit { seed: 11, std: 0.02 };
        let spec = ParamSpec { name: "model.embed_tokens.weight".into(), shape: vec![1000, 1000] };
        let (start, len) = (12_345, 500_000);
        let stream = hash::stream(init.seed, &spec.name);
        let in_order: Vec<u32> = (start..start + len).map(|i| ((init.std * standard_normal(stream, i as u64)) as f32).to_bits()).collect();
        for threads in [1, 2, 7] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut values = vec![0.5f32]; // appended to, as a shard is
            pool.install(|| init.read(&spec, start, len, &mut values)).unwrap();
            assert_eq!(values[0], 0.5);
            assert!(values[1..].iter().map(|v| v.to_bits()).eq(in_order.iter().copied()), "{threads} threads");
        }
    }

    #[test]
    fn lora_init_is_peft_kaiming_uniform_and_zero_b() {
        let init = LoraInit { seed: 1 };
        let a = ParamSpec { name: "model.layers.0.self_attn.q_proj.lora_A.weight".into(), shape: vec![4, 64] };
        let mut values = Vec::new();
        init.read(&a, 0, 256, &mut values).unwrap();
        let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max <= 0.125 && max > 0.1, "bound 1/sqrt(64) = 0.125, max {max}");
        let b = ParamSpec { name: "model.layers.0.self_attn.q_proj.lora_B.weight".into(), shape: vec![64, 4] };
        let mut zeros = Vec::new();
        init.read(&b, 0, 256, &mut zeros).unwrap();
        assert!(zeros.iter().all(|&v| v == 0.0));
    }
}
