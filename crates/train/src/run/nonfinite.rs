//! `train.on_nonfinite`: what the run does with a step whose loss or gradient norm is NaN or
//! infinite (the engine applied no update): end the run, or drop the step until too many come
//! in a row.

use anyhow::Result;
use shard_zero::{EngineError, StepReport};

use crate::config::run_config::{OnNonFinite, RunConfig};
use crate::job::job_end::OnEveryRank;

/// Counts the non-finite steps of a run, in a row and in all.
pub struct NonFiniteSkips {
    on_nonfinite: OnNonFinite,
    max_in_a_row: u64,
    in_a_row: u64,
    total: u64,
}
impl NonFiniteSkips {
    pub fn new(run: &RunConfig) -> Self {
        Self { on_nonfinite: run.train.on_nonfinite, max_in_a_row: run.train.max_nonfinite_skips, in_a_row: 0, total: 0 }
    }

    /// The step's report, none for a skipped step, or the error that ends the run; every rank
    /// gets the same answer (the loss and the norm are global).
    pub fn check(&mut self, step: Result<StepReport, EngineError>, is_main: bool) -> Result<Option<StepReport>> {
        match step {
            Ok(report) => {
                self.in_a_row = 0;
                Ok(Some(report))
            }
            Err(e @ EngineError::NonFinite { .. }) => {
                self.in_a_row += 1;
                self.total += 1;
                let fail = |why: String| Err(OnEveryRank(anyhow::anyhow!("{e}; {why}; nothing of this step was saved")).into());
                match self.on_nonfinite {
                    OnNonFinite::Error => fail("train.on_nonfinite = \"error\" ends the run (\"skip\" drops such steps)".into()),
                    OnNonFinite::Skip if self.in_a_row >= self.max_in_a_row => {
                        fail(format!("{} non-finite steps in a row (train.max_nonfinite_skips = {})", self.in_a_row, self.max_in_a_row))
                    }
                    OnNonFinite::Skip => {
                        if is_main {
                            eprintln!(
                                "warning: {e}; step skipped ({} in a row, {} in all; train.on_nonfinite = \"skip\")",
                                self.in_a_row, self.total
                            );
                        }
                        Ok(None)
                    }
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}
