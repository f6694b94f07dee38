//! The run's data: the training examples, and the eval set, either held out of them
//! (`eval.fraction`) or read from a file of its own (`eval.path`).

use anyhow::{Result, ensure};
use burn::tensor::backend::Backend;
use shard_comm::{Collective, World};
use shard_data::{Batch, BatchRules, DataError, DataSpec, Dataset, IGNORE_INDEX, Row, TemplateSource, prepare_cache};
use shard_model::{MistralConfig, hash};

use crate::config::run_config::RunConfig;
use crate::job::interrupt::Interrupt;

pub struct RunData {
    pub dataset: Dataset,
    /// The dataset rows trained on, in file order: all of them, less those `eval.fraction`
    /// holds out.
    pub train_rows: Vec<usize>,
    pub eval: Option<EvalSet>,
    /// The chat template the conversations were rendered with (`chat` and `messages` formats):
    /// saves record it and exports carry it.
    pub chat_template: Option<String>,
}

/// Examples evaluated on, spread over the ranks.
pub struct EvalSet {
    dataset: Dataset,
    rows: Vec<usize>,
}

impl RunData {
    /// Tokenizes what needs it (rank 0 builds the caches, or finds them up to date, while the
    /// other ranks wait), then every rank maps the datasets. The caches live under output.dir,
    /// which all ranks must see (a shared file system when the job spans nodes). A stop requested
    /// while a cache is built ends the build (its files removed) and the job.
    pub fn open<B: Backend, C: Collective<B>>(run: &RunConfig, model: &MistralConfig, comm: &C, interrupt: &Interrupt) -> Result<Self> {
        let spec = run.data_spec(model);
        let dir = run.data_cache_dir();
        let eval_file = run.eval_file_spec(model);
        if comm.world().is_main() {
            prepare(&spec, &dir, "data", interrupt)?;
            if let Some((spec, dir)) = &eval_file {
                prepare(spec, dir, "eval data", interrupt)?;
            }
        }
        interrupt.check_startup(comm, "building the dataset cache")?; // the other ranks wait here
        let dataset = Dataset::open(&spec, &dir)?;
        let fraction = run.eval.as_ref().and_then(|e| e.fraction);
        let (train_rows, eval) = match (eval_file, fraction) {
            (Some((spec, dir)), _) => {
                let eval = Dataset::open(&spec, &dir)?;
                ensure!(!eval.is_empty(), "eval.path = {}: no examples", spec.source.display());
                let rows = (0..eval.len()).collect();
                ((0..dataset.len()).collect(), Some(EvalSet { dataset: eval, rows }))
            }
            (None, Some(fraction)) => {
                let (train, held_out) = hold_out(dataset.len(), fraction, run.data.seed);
                ensure!(
                    !held_out.is_empty() && !train.is_empty(),
                    "eval.fraction = {fraction} of {} rows leaves no eval or no training rows",
                    dataset.len()
                );
                (train, Some(EvalSet { dataset: Dataset::open(&spec, &dir)?, rows: held_out }))
            }
            (None, None) => ((0..dataset.len()).collect(), None),
        };
        let chat_template = TemplateSource::of_conversations(&spec)?.map(|source| source.text);
        Ok(Self { dataset, train_rows, eval, chat_template })
    }
}

/// Builds or checks one cache. A build that a stop request ended is not an error here: the
/// start-up check after it stops every rank.
fn prepare(spec: &DataSpec, dir: &std::path::Path, what: &str, interrupt: &Interrupt) -> Result<()> {
    match prepare_cache(spec, dir, interrupt.flag()) {
        Ok(prepared) => {
            println!("{what}: {} ({})", prepared.stats, if prepared.built { "tokenized now" } else { "cached" });
            Ok(())
        }
        Err(DataError::Stopped(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Splits rows 0..len into (trained on, held out): `round(fraction * len)` rows held out, chosen
/// by a hash of (seed, row) so that the split depends on neither world size nor file order.
pub fn hold_out(len: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let count = ((fraction * len as f64).round() as usize).clamp(1, len);
    let mut by_hash: Vec<usize> = (0..len).collect();
    by_hash.sort_by_key(|&row| hash::mix(seed ^ HOLD_OUT_STREAM, row as u64));
    let mut held_out = by_hash.split_off(len - count);
    by_hash.sort_unstable();
    held_out.sort_unstable();
    (by_hash, held_out)
}

/// Keeps the held-out choice apart from the other uses of data.seed (the shuffle).
const HOLD_OUT_STREAM: u64 = 0x6576_616c; // "eval"

impl EvalSet {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// This rank's micro-batches of the eval set: round k gives rank r the `micro_batch_size`
    /// rows from `(k * world + r) * micro_batch_size`. Every rank gets as many batches (each one
    /// gathers every unit); a rank past the end gets a batch without target tokens.
    pub fn rank_batches<'a>(&'a self, world: &World, micro_batch_size: usize, rules: BatchRules) -> impl Iterator<Item = Batch> + 'a {
        let (rank, size) = (world.rank, world.size);
        let rounds = self.rows.len().div_ceil(micro_batch_size * size);
        (0..rounds).map(move |round| {
            let start = ((round * size + rank) * micro_batch_size).min(self.rows.len());
            let end = (start + micro_batch_size).min(self.rows.len());
            let mut rows: Vec<Row> = self.rows[start..end].iter().map(|&row| self.dataset.get(row)).collect();
            if rows.is_empty() {
                let mut filler = self.dataset.get(self.rows[0]);
                filler.labels.fill(IGNORE_INDEX);
                rows.push(filler);
            }
            Batch::new(&rows.iter().collect::<Vec<_>>(), &rules)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_held_out_rows_are_a_fixed_share_never_trained_on() {
        let (train, held_out) = hold_out(100, 0.1, 7);
        assert_eq!(held_out.len(), 10);
        assert_eq!(train.len(), 90);
        assert!(held_out.iter().all(|row| !train.contains(row)));
        assert_eq!(hold_out(100, 0.1, 7), (train.clone(), held_out.clone()), "deterministic");
        assert_ne!(hold_out(100, 0.1, 8).1, held_out, "the seed chooses");
        assert_ne!(held_out, (90..100).collect::<Vec<_>>(), "not just the end of the file");
        assert_eq!(hold_out(3, 0.01, 0).1.len(), 1, "at least one row");
    }
}
