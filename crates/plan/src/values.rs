//! The values of the planner's flags, read from text with the error a user should see: counts,
//! positive numbers, GPU presets and projection names.

use shard_model::PROJECTIONS;

use crate::{Hardware, preset_names};

/// A whole number >= 1 (ranks, micro-batches, examples).
pub fn parse_count(text: &str) -> Result<usize, String> {
    text.parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(|| "expected a whole number >= 1".into())
}

/// A finite number > 0 (epochs, prices).
pub fn parse_positive(text: &str) -> Result<f64, String> {
    text.parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0).ok_or_else(|| "expected a number > 0".into())
}

/// A GPU preset by name.
pub fn parse_gpu(text: &str) -> Result<Hardware, String> {
    Hardware::preset(text).ok_or_else(|| format!("unknown GPU; expected one of {:?}", preset_names()))
}

/// One of the model's projections (`q_proj`, ...).
pub fn parse_projection(text: &str) -> Result<String, String> {
    match PROJECTIONS.contains(&text) {
        true => Ok(text.to_owned()),
        false => Err(format!("not a projection of the model; expected some of {PROJECTIONS:?}")),
    }
}
