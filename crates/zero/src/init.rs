//! Where a rank's initial shard values come from: a HF checkpoint, read by element range so that
//! a rank reads only what it owns, or HF's random initialisation, computed per element from a
//! counter so that any rank can make its own slice and every world size gets the same model.

use std::f64::consts::PI;

use shard_checkpoint::{CheckpointError, HfCheckpoint};
use shard_model::ParamSpec;

use crate::FlatLayout;

/// Initial parameter values by element range.
pub trait ParamSource {
    /// Appends elements `[start, start + len)` of the flattened `spec` to `out`.
    fn read(&self, spec: &ParamSpec, start: usize, len: usize, out: &mut Vec<f32>) -> Result<(), CheckpointError>;
}

impl ParamSource for HfCheckpoint {
    fn read(&self, spec: &ParamSpec, start: usize, len: usize, out: &mut Vec<f32>) -> Result<(), CheckpointError> {
        self.read_f32_range_into(&spec.name, start, len, out)
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
        let stream = self.seed ^ splitmix64(fnv1a(spec.name.as_bytes()));
        out.extend((start..start + len).map(|i| (self.std * standard_normal(stream, i as u64)) as f32));
        Ok(())
    }
}

/// This rank's shard of a unit: its range of the flat layout, padding as zeros.
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

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A standard normal draw that depends only on (stream, index): Box-Muller on two hashed uniforms.
fn standard_normal(stream: u64, index: u64) -> f64 {
    let h1 = splitmix64(stream ^ splitmix64(index));
    let h2 = splitmix64(h1);
    let u1 = ((h1 >> 11) as f64 + 0.5) / (1u64 << 53) as f64; // in (0, 1): ln is finite
    let u2 = (h2 >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
