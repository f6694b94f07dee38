//! Before a save and before the export: every trained parameter must be finite. A step with a
//! finite loss and gradient norm can still overflow the weights (an update of lr / (1 - beta1)
//! past f32's range), and a save or an export of inf or NaN weights is of no use to anyone.

use anyhow::{Result, anyhow};
use burn::tensor::backend::AutodiffBackend;
use shard_comm::{Collective, ReduceOp};
use shard_zero::Engine;

use crate::job::job_end::OnEveryRank;

/// Parameters named in the error; the rest are counted.
const NAMED: usize = 3;

/// The trained parameters that already held inf or NaN when the run started (a checkpoint with a
/// NaN: its steps fail or are skipped by `train.on_nonfinite`, and a save of the state as loaded
/// is kept as it is). Only the ones an update made non-finite are refused.
pub struct FiniteParams {
    names: Vec<String>,
    nonfinite_at_start: Vec<f64>,
}

impl FiniteParams {
    /// Every rank must call it: one all-reduce of a flag per trained parameter.
    pub fn at_start<B: AutodiffBackend, C: Collective<B::InnerBackend>>(engine: &Engine<B, C>) -> Self {
        let (names, nonfinite_at_start) = agreed_flags(engine);
        Self { names, nonfinite_at_start }
    }

    /// An error (the same on every rank, see [`OnEveryRank`]) naming the trained parameters that
    /// hold inf or NaN after step `step` and did not at the start; `what` is what was about to be
    /// written ("save", "export"). Every rank must call it: one all-reduce.
    pub fn ensure_finite<B: AutodiffBackend, C: Collective<B::InnerBackend>>(
        &self,
        engine: &Engine<B, C>,
        step: u64,
        what: &str,
    ) -> Result<()> {
        let (_, now) = agreed_flags(engine);
        let bad: Vec<&str> = self
            .names
            .iter()
            .zip(now.iter().zip(&self.nonfinite_at_start))
            .filter(|(_, (now, before))| **now > 0.0 && **before == 0.0)
            .map(|(name, _)| name.as_str())
            .collect();
        if bad.is_empty() {
            return Ok(());
        }
        let more = match bad.len() {
            n if n > NAMED => format!(" and {} more", n - NAMED),
            _ => String::new(),
        };
        let named: Vec<String> = bad.iter().take(NAMED).map(|name| format!("`{name}`")).collect();
        Err(OnEveryRank(anyhow!(
            "after step {step}, {} of {} trained parameters hold inf or NaN ({}{more}): the {what} was not written. The update overflowed f32: lower train.lr",
            bad.len(),
            self.names.len(),
            named.join(", ")
        ))
        .into())
    }
}

/// [`nonfinite_flags`], combined over every rank.
fn agreed_flags<B: AutodiffBackend, C: Collective<B::InnerBackend>>(engine: &Engine<B, C>) -> (Vec<String>, Vec<f64>) {
    let (names, mut flags) = nonfinite_flags(engine);
    engine.comm().all_reduce_scalars(&mut flags, ReduceOp::Max);
    (names, flags)
}

/// Every trained parameter's name, in the same order on every rank (units, their trained parts,
/// each part's parameters), and 1.0 where this rank's shard of it holds a non-finite value.
fn nonfinite_flags<B: AutodiffBackend, C: Collective<B::InnerBackend>>(engine: &Engine<B, C>) -> (Vec<String>, Vec<f64>) {
    let rank = Collective::<B::InnerBackend>::world(&engine.groups().group).rank;
    let (mut names, mut flags) = (Vec::new(), Vec::new());
    for part in engine.units().iter().flat_map(|unit| &unit.parts).filter(|part| part.is_trainable()) {
        let values = match part.host() {
            Some(host) => host.master.clone(),
            None => part.shard.to_data().into_vec::<f32>().expect("a trained part's shard is its f32 master"),
        };
        let mut part_flags = vec![0.0; part.layout.params.len()];
        for piece in part.layout.pieces(part.layout.shard_range(rank)) {
            if values[piece.start_in_range..piece.start_in_range + piece.len].iter().any(|v| !v.is_finite()) {
                part_flags[piece.param] = 1.0;
            }
        }
        names.extend(part.layout.params.iter().map(|(spec, _)| spec.name.clone()));
        flags.extend(part_flags);
    }
    (names, flags)
}
