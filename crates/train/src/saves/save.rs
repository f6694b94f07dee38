//! Sharded saves during training and the resume from one. A save writes one file per rank into
//! a fresh directory (no gather; a few scalars agree on the save id and collect the files'
//! checksums); rank 0 then writes the train state and the COMPLETE marker, renames the directory
//! into place and updates `latest` (see shard_checkpoint::saves). A resume checks the checksums,
//! each rank a share of the files, and makes the save it starts from `latest`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use shard_checkpoint::{CheckpointError, FORMAT, SafetensorsWriter, SavedCheckpoint, ScheduleState, TensorHeader, TrainState, saves};
use shard_comm::{Collective, ReduceOp};
use shard_data::SamplerPosition;
use shard_model::{LoraConfig, MistralConfig};
use shard_zero::Engine;

use crate::config::run_config::{RunConfig, TrainMode};

/// `<output.dir>/checkpoints`
pub fn checkpoints_root(run: &RunConfig) -> PathBuf {
    run.output.dir.join("checkpoints")
}

/// What a save records about the run besides the engine's state.
pub struct RunPosition<'a> {
    pub sampler: SamplerPosition,
    pub examples_per_step: u64,
    pub model_config: &'a serde_json::Value,
    pub model_path: Option<&'a Path>,
    /// The fingerprint of the weights at `model_path`.
    pub model_fingerprint: Option<&'a str>,
    pub schedule: &'a ScheduleState,
    /// The chat template the run's conversations were rendered with.
    pub chat_template: Option<&'a str>,
}

/// Saves this rank's shards and, on rank 0, completes the checkpoint. Every rank must call it.
/// Each shard group holds the whole state: the first one (ranks 0 to shard_size - 1) writes it,
/// as a run of shard_size ranks would.
pub fn save<B: AutodiffBackend, C: Collective<B::InnerBackend>>(
    engine: &Engine<B, C>,
    run: &RunConfig,
    position: &RunPosition,
) -> Result<PathBuf> {
    let started = Instant::now();
    let world = *engine.comm().world();
    let group = *Collective::<B::InnerBackend>::world(&engine.groups().group);
    let writes = world.rank < group.size;
    let root = checkpoints_root(run);
    let step = engine.steps_done();
    let save_id = agreed_save_id(engine.comm());
    let partial = saves::partial_dir(&root, step, &save_id);
    std::fs::create_dir_all(&partial).with_context(|| format!("cannot create {}", partial.display()))?;

    let written = if writes {
        let shards = engine.checkpoint_shards();
        let headers =
            shards.iter().map(|shard| TensorHeader { name: shard.name.clone(), dtype: shard.dtype, shape: vec![shard.len()] }).collect();
        let metadata = [(saves::SAVE_ID_KEY.to_owned(), save_id.clone())].into();
        let mut writer = SafetensorsWriter::create(&partial.join(saves::rank_file_name(group.rank, group.size)), headers, &metadata)?;
        for shard in &shards {
            writer.write(&shard.name, &shard.values())?;
        }
        hold_save_for_tests(run, step, world.rank);
        Some((group.rank, writer.finish()?))
    } else {
        None
    };
    let rank_checksums = gather_checksums(engine.comm(), group.size, written); // every rank file is synced

    let dir = saves::step_dir(&root, step);
    if world.is_main() {
        let state = TrainState {
            format: FORMAT.into(),
            save_id,
            step,
            optimizer: run.train.optimizer.kind().name().into(),
            micro_batches_done: engine.micro_batches_done(),
            sampler: position.sampler,
            examples_per_step: position.examples_per_step,
            schedule: position.schedule.clone(),
            world_size: group.size,
            model_config: position.model_config.clone(),
            model_path: position.model_path.map(Path::to_owned),
            model_fingerprint: position.model_fingerprint.map(str::to_owned),
            lora: engine.lora().cloned(),
            nf4_base: run.train.mode == TrainMode::Qlora,
            tokenizer: run.data.tokenizer.clone(),
            chat_template: position.chat_template.map(str::to_owned),
            units: engine.unit_states(),
            rank_files: (0..group.size).map(|r| saves::rank_file_name(r, group.size)).collect(),
            rank_checksums,
        };
        let (_, notes) = saves::finalize(&root, &partial, &state, run.output.keep_last)?;
        for note in notes {
            println!("{note}");
        }
        println!("saved {} in {:.1} s", dir.display(), started.elapsed().as_secs_f64());
    }
    engine.comm().barrier(); // the checkpoint is complete on every rank's return
    Ok(dir)
}

/// A save id that every rank agrees on: 52 bits (exact in the f64 that carries them) of rank 0's
/// clock and process id, in hex.
fn agreed_save_id<B: Backend, C: Collective<B>>(comm: &C) -> String {
    let mut id = [0.0];
    if comm.world().is_main() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        id[0] = ((nanos ^ (u64::from(std::process::id()) << 40)) & ((1 << 52) - 1)) as f64;
    }
    comm.all_reduce_scalars(&mut id, ReduceOp::Max);
    format!("{:013x}", id[0] as u64)
}

/// The checksum of every rank file, in file order, in hex (two exact 32-bit halves per file),
/// from the ranks that wrote one (`written`: their file's index and checksum).
fn gather_checksums<B: Backend, C: Collective<B>>(comm: &C, files: usize, written: Option<(usize, u64)>) -> Vec<String> {
    let mut halves = vec![0.0; 2 * files];
    if let Some((file, checksum)) = written {
        halves[2 * file] = (checksum >> 32) as f64;
        halves[2 * file + 1] = (checksum & 0xffff_ffff) as f64;
    }
    comm.all_reduce_scalars(&mut halves, ReduceOp::Sum);
    halves.chunks_exact(2).map(|h| format!("{:016x}", ((h[0] as u64) << 32) | h[1] as u64)).collect()
}

/// `SHARD_TRAIN_TEST_HOLD_SAVE=STEP`: the save after step STEP stops before each rank's file is
/// complete. The rank writes its pid to `<output.dir>/saving-rank-R.pid` (whole: written aside,
/// then renamed) and waits until the test creates `<output.dir>/release-save`, so that a test
/// kills a rank in the middle of a save however long it takes to get there, with no window to hit.
fn hold_save_for_tests(run: &RunConfig, step: u64, rank: usize) {
    let Some(at) = std::env::var("SHARD_TRAIN_TEST_HOLD_SAVE").ok().and_then(|s| s.parse::<u64>().ok()) else { return };
    if at != step {
        return;
    }
    let dir = &run.output.dir;
    let (aside, pid_file) = (dir.join(format!(".saving-rank-{rank}.pid")), dir.join(format!("saving-rank-{rank}.pid")));
    let _ = std::fs::write(&aside, std::process::id().to_string()).and_then(|()| std::fs::rename(&aside, &pid_file));
    while !dir.join("release-save").exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// What a resume checks the save against.
pub struct ResumeChecks<'a> {
    pub model: &'a MistralConfig,
    pub lora: Option<&'a LoraConfig>,
    pub examples_per_step: u64,
    /// The fingerprint of this run's base weights (checked for LoRA, whose base is not saved).
    pub model_fingerprint: Option<&'a str>,
    pub schedule: &'a ScheduleState,
    /// `train.optimizer` of this run.
    pub optimizer: &'a str,
    /// `--allow-schedule-change`: a changed schedule is taken (with a warning) instead of refused.
    pub allow_schedule_change: bool,
}

/// The checkpoint `--resume` names, its rank files' checksums checked (each rank a share of the
/// files), and checked against this run: same model, same mode and adapters, the same base for
/// LoRA, same examples per step. From `latest`, a damaged save is skipped for the previous one.
/// Rank 0 reports a fall-back, removes unfinished saves and, the checks passed, makes the save the
/// newest of the run's lineage (`saves::adopt`: `latest` names it, later saves are kept aside as
/// abandoned). Every rank must call it.
pub fn open_resume<B: Backend, C: Collective<B>>(run: &RunConfig, spec: &Path, checks: &ResumeChecks, comm: &C) -> Result<SavedCheckpoint> {
    let root = checkpoints_root(run);
    let is_main = comm.world().is_main();
    let (saved, warnings) = saves::open_checked(&root, spec, |saved| verify_shared(saved, comm))?;
    let dir = saved.dir().to_owned();
    if is_main {
        for warning in warnings {
            eprintln!("warning: {warning}");
        }
        for note in saves::remove_incomplete(&root)? {
            eprintln!("warning: {note}");
        }
    }
    let state = saved.state();
    let saved_model = MistralConfig::from_json(&state.model_config, &dir.join(saves::STATE_FILE))?;
    if &saved_model != checks.model {
        bail!("{} was saved from another model than {}", dir.display(), run.model_config_path().display());
    }
    if state.lora.as_ref() != checks.lora {
        bail!(
            "{} was saved with LoRA settings {}, this run has {} (train.mode and [lora] must match to resume)",
            dir.display(),
            describe_lora(state.lora.as_ref()),
            describe_lora(checks.lora)
        );
    }
    check_lora_base(&saved, run.model.path.as_deref(), checks.model_fingerprint)?;
    if state.examples_per_step != checks.examples_per_step {
        bail!(
            "{} was saved by a run of {} examples per step; this one takes {} (micro_batch_size x grad_accum x ranks): keep them equal to resume",
            dir.display(),
            state.examples_per_step,
            checks.examples_per_step
        );
    }
    if state.optimizer != checks.optimizer {
        bail!(
            "{} was saved by a run with train.optimizer = \"{}\", this run has \"{}\": the optimizer states cannot be carried over; keep train.optimizer = \"{}\" to resume",
            dir.display(),
            state.optimizer,
            checks.optimizer,
            state.optimizer
        );
    }
    let changes = state.schedule.differences(checks.schedule);
    if !changes.is_empty() {
        let what = format!("{} was saved with another learning-rate schedule ({})", dir.display(), changes.join("; "));
        if !checks.allow_schedule_change {
            bail!("{what}: the schedule would be re-stretched under the steps done; keep the settings, or pass --allow-schedule-change");
        }
        if is_main {
            eprintln!("warning: {what}; continuing with this run's (--allow-schedule-change)");
        }
    }
    if is_main {
        for note in saves::adopt(&root, &dir, state.step)? {
            println!("{note}");
        }
    }
    Ok(saved)
}

/// Refuses a LoRA save whose adapters were trained on another base than the weights at `path`
/// (fingerprint `found`): resuming or merging them needs the base they were trained on.
pub fn check_lora_base(saved: &SavedCheckpoint, path: Option<&Path>, found: Option<&str>) -> Result<()> {
    let state = saved.state();
    if state.lora.is_none() || state.model_fingerprint.as_deref() == found {
        return Ok(());
    }
    let shown = |path: Option<&Path>| path.map_or("(none)".into(), |p| p.display().to_string());
    bail!(
        "{} was saved with adapters for the base {} (fingerprint {}); {} holds other weights (fingerprint {}): the adapters need the base they were trained on",
        saved.dir().display(),
        shown(state.model_path.as_deref()),
        state.model_fingerprint.as_deref().unwrap_or("none"),
        shown(path),
        found.unwrap_or("none"),
    )
}

/// `r = 16, alpha = 32, dropout = 0, targets q_proj, v_proj`, or `none (full fine-tuning)`.
fn describe_lora(lora: Option<&LoraConfig>) -> String {
    match lora {
        None => "none (full fine-tuning)".into(),
        Some(l) => format!("r = {}, alpha = {}, dropout = {}, targets {}", l.r, l.alpha, l.dropout, l.targets.join(", ")),
    }
}

/// Checks the rank files' checksums, rank r the files r, r + world, ...; every rank returns the
/// same answer: the first damaged file's error, or Ok.
fn verify_shared<B: Backend, C: Collective<B>>(saved: &SavedCheckpoint, comm: &C) -> Result<(), CheckpointError> {
    let world = comm.world();
    let files = saved.state().rank_files.len();
    let first_bad_here = (world.rank..files).step_by(world.size).find(|&r| saved.verify_rank_file(r).is_err());
    // The lowest damaged file over all ranks, as the max of its negation (-inf: none).
    let mut lowest = [first_bad_here.map_or(f64::NEG_INFINITY, |r| -(r as f64))];
    comm.all_reduce_scalars(&mut lowest, ReduceOp::Max);
    if lowest[0] == f64::NEG_INFINITY {
        return Ok(());
    }
    let bad = (-lowest[0]) as usize;
    saved.verify_rank_file(bad).and(Err(CheckpointError::Damaged {
        path: saved.dir().join(&saved.state().rank_files[bad]),
        why: "its checksum does not match the one the save recorded".into(),
    }))
}
