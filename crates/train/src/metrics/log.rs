//! Rank 0's record of the run: `<output.dir>/metrics.jsonl`, one JSON object per step, the
//! progress shown while training, TensorBoard's event file when asked for, and
//! `<output.dir>/summary.json` at the end.
//!
//! metrics.jsonl is only ever appended to, one whole line per write, so that nothing is held
//! back in a buffer when a job is aborted and no resume can shorten it (one that fails before its
//! first step leaves it as it was). A run resumed from an earlier save records its steps again
//! after the lines of the continuation it abandoned: a line of step s supersedes the lines before
//! it of step s and later (the charts draw the run so, chart::run_history).

use std::cell::RefCell;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use shard_zero::StepReport;

use crate::metrics::device_memory::DeviceMemory;
use crate::metrics::progress::{Progress, ProgressMode};
use crate::metrics::tensorboard::EventWriter;

#[derive(Debug, Serialize)]
pub struct StepMetrics {
    pub step: u64,
    /// Passes over the training rows done by the end of the step (step x rows per step / training
    /// rows; a row is an example, or several when packed).
    pub epoch: f64,
    /// When the step ended: seconds since the Unix epoch.
    pub timestamp: f64,
    pub loss: f64,
    /// Mean token loss over the eval set after this step, on the steps that evaluate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    pub grad_norm: f64,
    pub lr: f64,
    /// Input tokens of the step, all ranks together.
    pub tokens: u64,
    pub target_tokens: u64,
    pub seconds: f64,
    /// Of `seconds`, how long rank 0's device sat idle waiting for collectives: the exposed
    /// communication (gathers the prefetch did not hide, reduce-scatters that outlasted the next
    /// unit's compute, reductions of scalars).
    pub exposed_comm_s: f64,
    pub tokens_per_s: f64,
    /// Bytes this rank all-gathered (full unit sizes) during the step.
    pub bytes_all_gathered: u64,
    /// Bytes this rank passed to reduce-scatter (full unit gradient sizes) during the step.
    pub bytes_reduce_scattered: u64,
    /// Bytes of grad shards this rank all-reduced with its replicas in the other shard groups
    /// (0 with one group).
    pub bytes_all_reduced_across_groups: u64,
    /// The most bytes any rank's engine held at once during the step.
    pub peak_engine_bytes: u64,
    /// Model states (shards and optimizer state) rank 0 holds between steps, on its device.
    pub model_state_bytes: u64,
    /// With `runtime.offload = "optimizer"`: the states rank 0 keeps in host memory (f32 masters,
    /// gradient shards, Adam states).
    #[serde(skip_serializing_if = "is_zero")]
    pub host_state_bytes: u64,
    /// Rank 0's most bytes of gathered units and their full-size gradients held at once.
    pub peak_gathered_bytes: u64,
}

fn is_zero(bytes: &u64) -> bool {
    *bytes == 0
}

impl StepMetrics {
    /// The figures of step `step` (1-based), which ended now; `epoch` as [`StepMetrics::epoch`].
    pub fn new(step: u64, epoch: f64, report: &StepReport, seconds: f64, peak_engine_bytes: u64, model_state_bytes: u64) -> Self {
        Self {
            step,
            epoch,
            timestamp: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            loss: report.loss,
            eval_loss: None,
            grad_norm: report.grad_norm,
            lr: report.lr,
            tokens: report.tokens,
            target_tokens: report.target_tokens,
            seconds,
            exposed_comm_s: report.exposed_comm_s,
            tokens_per_s: report.tokens as f64 / seconds,
            bytes_all_gathered: report.traffic.all_gather.received,
            bytes_reduce_scattered: report.traffic.reduce_scatter.sent,
            bytes_all_reduced_across_groups: report.replica_traffic.all_reduce.sent,
            peak_engine_bytes,
            model_state_bytes,
            host_state_bytes: 0,
            peak_gathered_bytes: report.peak_gathered_bytes,
        }
    }
}

/// What a run did, for benchmarks and the planner's checks.
#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub world_size: usize,
    /// The run's steps so far, over every invocation (metrics.jsonl's history, resumes included).
    pub steps: u64,
    /// The train loss of the last step, and the last eval loss, if any.
    pub final_loss: Option<f64>,
    pub final_eval_loss: Option<f64>,
    /// Seconds spent in the run's steps and their input tokens, over every invocation, and their
    /// ratio.
    pub train_seconds: f64,
    pub tokens: u64,
    pub tokens_per_s: f64,
    /// Tokens per second of the whole job over the steps after the first two this process ran
    /// (all of them when it ran two or fewer): start-up and first-touch allocations are left out.
    pub steady_tokens_per_s: f64,
    /// Peak resident memory of each rank after the training steps, before the export.
    pub peak_rss_bytes: Vec<u64>,
    /// On GPUs, each rank's device memory: the most seen after a step (device_memory.rs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_memory: Option<Vec<DeviceMemory>>,
    /// In an f32 run, what its matmuls computed in: "IEEE" (f32 multiply-adds), or "TF32" where
    /// `runtime.tf32` let cuda or wgpu use tensor cores (`shard_kernels::f32_matmul_name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f32_matmul: Option<&'static str>,
    pub model_state_bytes: u64,
    /// Rank 0's offloaded states in host memory (see [`StepMetrics::host_state_bytes`]).
    #[serde(skip_serializing_if = "is_zero")]
    pub host_state_bytes: u64,
    /// The most bytes any rank's engine held at once, over all steps.
    pub peak_engine_bytes: u64,
    /// Rank 0's most bytes of gathered units and their full-size gradients, over all steps.
    pub peak_gathered_bytes: u64,
}

/// What the summary needs from the steps so far.
#[derive(Default)]
struct Totals {
    steps: u64,
    /// Tokens and seconds of all steps, and of the steps after the warm-up.
    all: (u64, f64),
    steady: (u64, f64),
    peak_engine_bytes: u64,
    peak_gathered_bytes: u64,
    model_state_bytes: u64,
    host_state_bytes: u64,
}

/// Steps left out of the steady-state throughput.
const WARMUP_STEPS: u64 = 2;

pub struct MetricsLog {
    /// metrics.jsonl, opened to append; each line goes in one write.
    out: RefCell<File>,
    path: PathBuf,
    tensorboard: Option<RefCell<EventWriter>>,
    progress: Progress,
    totals: RefCell<Totals>,
}

impl MetricsLog {
    /// Opens `<dir>/metrics.jsonl` to append the steps of a run whose first step is
    /// `first_step + 1` (see the module's notes). With `tensorboard`, the same figures go to an
    /// event file under `<dir>/tb/` too.
    pub fn open(dir: &Path, total_steps: u64, first_step: u64, tensorboard: bool, progress: ProgressMode) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create output.dir {}", dir.display()))?;
        let path = dir.join("metrics.jsonl");
        let file = File::options().create(true).append(true).open(&path).with_context(|| format!("cannot write {}", path.display()))?;
        let tensorboard = tensorboard.then(|| EventWriter::create(&dir.join("tb"))).transpose()?.map(RefCell::new);
        Ok(Self {
            out: RefCell::new(file),
            path,
            tensorboard,
            progress: Progress::new(total_steps, first_step, progress),
            totals: Default::default(),
        })
    }

    pub fn record(&self, m: &StepMetrics) -> Result<()> {
        {
            let mut t = self.totals.borrow_mut();
            t.steps += 1;
            t.all = (t.all.0 + m.tokens, t.all.1 + m.seconds);
            if t.steps > WARMUP_STEPS {
                t.steady = (t.steady.0 + m.tokens, t.steady.1 + m.seconds);
            }
            t.peak_engine_bytes = t.peak_engine_bytes.max(m.peak_engine_bytes);
            t.peak_gathered_bytes = t.peak_gathered_bytes.max(m.peak_gathered_bytes);
            t.model_state_bytes = m.model_state_bytes;
            t.host_state_bytes = m.host_state_bytes;
        }
        let line = serde_json::to_string(m)? + "\n";
        self.out.borrow_mut().write_all(line.as_bytes()).with_context(|| format!("cannot append to {}", self.path.display()))?;
        if let Some(tensorboard) = &self.tensorboard {
            tensorboard.borrow_mut().step_scalars(m)?;
        }
        let summary = format!(
            "loss {:.4}  grad_norm {:.4}  lr {:.3e}  {:.0} tok/s  comm {:.0}%",
            m.loss,
            m.grad_norm,
            m.lr,
            m.tokens_per_s,
            100.0 * m.exposed_comm_s / m.seconds
        );
        self.progress.step(m.step, summary);
        if let Some(eval_loss) = m.eval_loss {
            self.progress.note(&format!("step {}: eval loss {eval_loss:.4}", m.step));
        }
        Ok(())
    }

    /// The run's steps as metrics.jsonl records them over every invocation (a resumed step's
    /// line superseding the abandoned ones).
    fn history(&self) -> Result<Vec<serde_json::Value>> {
        let text = std::fs::read_to_string(&self.path).with_context(|| format!("cannot read {}", self.path.display()))?;
        Ok(crate::metrics::chart::run_history(&self.path, &text)?.into_iter().map(|(_, m)| m).collect())
    }

    /// Closes the progress bar, writes summary.json and prints its figures.
    pub fn finish(
        self,
        dir: &Path,
        world_size: usize,
        peak_rss_bytes: Vec<u64>,
        device_memory: Option<Vec<DeviceMemory>>,
        f32_matmul: Option<&'static str>,
    ) -> Result<()> {
        self.progress.finish();
        let t = self.totals.borrow();
        let history = self.history()?;
        let last = |key: &str| history.iter().rev().find_map(|m| m[key].as_f64());
        let sum = |key: &str| history.iter().filter_map(|m| m[key].as_f64()).sum::<f64>();
        let (train_seconds, tokens) = (sum("seconds"), sum("tokens") as u64);
        let summary = RunSummary {
            world_size,
            steps: last("step").unwrap_or(0.0) as u64,
            final_loss: last("loss"),
            final_eval_loss: last("eval_loss"),
            train_seconds,
            tokens,
            tokens_per_s: if train_seconds > 0.0 { tokens as f64 / train_seconds } else { 0.0 },
            steady_tokens_per_s: {
                let (tokens, seconds) = if t.steady.0 > 0 { t.steady } else { t.all };
                tokens as f64 / seconds
            },
            peak_rss_bytes,
            device_memory,
            f32_matmul,
            model_state_bytes: t.model_state_bytes,
            host_state_bytes: t.host_state_bytes,
            peak_engine_bytes: t.peak_engine_bytes,
            peak_gathered_bytes: t.peak_gathered_bytes,
        };
        let mib = |b: u64| format!("{:.0}", b as f64 / (1 << 20) as f64);
        println!(
            "{:.0} tokens/s (steady state); peak RSS per rank {} MiB; engine peak {} MiB of which model states {} MiB",
            summary.steady_tokens_per_s,
            summary.peak_rss_bytes.iter().map(|&b| mib(b)).collect::<Vec<_>>().join("/"),
            mib(summary.peak_engine_bytes),
            mib(summary.model_state_bytes),
        );
        if let Some(device) = &summary.device_memory {
            let per_rank = |figure: fn(&DeviceMemory) -> u64| device.iter().map(|d| mib(figure(d))).collect::<Vec<_>>().join("/");
            println!(
                "device memory per rank after a step, at most: cubecl pool reserved {} MiB (in use {} MiB); device used {} MiB",
                per_rank(|d| d.pool_reserved_bytes),
                per_rank(|d| d.pool_in_use_bytes),
                per_rank(|d| d.device_used_bytes),
            );
        }
        // Written aside, synced and renamed: a full disk leaves no truncated summary.json.
        let path = dir.join("summary.json");
        let tmp = dir.join("summary.json.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(serde_json::to_string_pretty(&summary)?.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().with_context(|| format!("cannot write {}", path.display()))
    }
}
