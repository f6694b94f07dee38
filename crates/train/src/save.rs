//! Sharded saves during training and the resume from one. A save writes one file per rank (no
//! gather, no communication besides barriers); rank 0 then writes the train state, the COMPLETE
//! marker and `latest` (see shard_checkpoint::saves).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use shard_checkpoint::{DiskDtype, FORMAT, SafetensorsWriter, SavedCheckpoint, TensorHeader, TrainState, saves};
use shard_comm::Collective;
use shard_data::SamplerPosition;
use shard_model::{LoraConfig, MistralConfig};
use shard_zero::Engine;

use crate::run_config::{RunConfig, TrainMode};

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
}

/// Saves this rank's shards and, on rank 0, completes the checkpoint. Every rank must call it.
/// Each shard group holds the whole state: the first one (ranks 0 to shard_size - 1) writes it,
/// as a run of shard_size ranks would.
pub fn save<B: AutodiffBackend, C: Collective<B::InnerBackend>>(engine: &Engine<B, C>, run: &RunConfig, position: &RunPosition) -> Result<PathBuf> {
    let started = Instant::now();
    let world = *engine.comm().world();
    let group = *Collective::<B::InnerBackend>::world(&engine.groups().group);
    let writes = world.rank < group.size;
    let root = checkpoints_root(run);
    let dir = saves::step_dir(&root, engine.steps_done());
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    if writes {
        let shards = engine.checkpoint_shards();
        let headers = shards.iter().map(|shard| TensorHeader { name: shard.name.clone(), dtype: DiskDtype::F32, shape: vec![shard.len()] }).collect();
        let mut writer = SafetensorsWriter::create(&dir.join(saves::rank_file_name(group.rank, group.size)), headers, &Default::default())?;
        for shard in &shards {
            writer.write(&shard.name, &shard.values())?;
        }
        slow_save_for_tests(run, engine.steps_done(), world.rank);
        writer.finish()?;
    }
    engine.comm().barrier(); // every rank file is synced

    if world.is_main() {
        let state = TrainState {
            format: FORMAT.into(),
            step: engine.steps_done(),
            micro_batches_done: engine.micro_batches_done(),
            sampler: position.sampler,
            examples_per_step: position.examples_per_step,
            world_size: group.size,
            model_config: position.model_config.clone(),
            model_path: position.model_path.map(Path::to_owned),
            lora: engine.lora().cloned(),
            nf4_base: run.train.mode == TrainMode::Qlora,
            units: engine.unit_states(),
            rank_files: (0..group.size).map(|r| saves::rank_file_name(r, group.size)).collect(),
        };
        for note in saves::finalize(&root, &dir, &state, run.output.keep_last)? {
            println!("{note}");
        }
        println!("saved {} in {:.1} s", dir.display(), started.elapsed().as_secs_f64());
    }
    engine.comm().barrier(); // the checkpoint is complete on every rank's return
    Ok(dir)
}

/// `SHARD_TRAIN_TEST_SLOW_SAVE=STEP:MS`: the save after step STEP waits MS milliseconds before
/// each rank's file is complete, after writing `<output.dir>/saving-rank-R.pid`, so that a test
/// can kill a rank in the middle of a save.
fn slow_save_for_tests(run: &RunConfig, step: u64, rank: usize) {
    let Ok(spec) = std::env::var("SHARD_TRAIN_TEST_SLOW_SAVE") else { return };
    let Some((at, ms)) = spec.split_once(':').and_then(|(s, m)| Some((s.parse::<u64>().ok()?, m.parse::<u64>().ok()?))) else { return };
    if at == step {
        let _ = std::fs::write(run.output.dir.join(format!("saving-rank-{rank}.pid")), std::process::id().to_string());
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// The checkpoint `--resume` names, checked against this run: same model, same mode and
/// adapters, same examples per step. Rank 0 reports a fall-back and removes unfinished saves.
pub fn open_resume(run: &RunConfig, spec: &Path, model: &MistralConfig, lora: Option<&LoraConfig>, examples_per_step: u64, is_main: bool) -> Result<SavedCheckpoint> {
    let root = checkpoints_root(run);
    let (dir, fallback) = saves::resolve(&root, spec)?;
    let saved = SavedCheckpoint::open(&dir)?;
    if is_main {
        if let Some(why) = fallback {
            eprintln!("warning: {why}");
        }
        for note in saves::remove_incomplete(&root)? {
            eprintln!("warning: {note}");
        }
    }
    let state = saved.state();
    let saved_model = MistralConfig::from_json(&state.model_config, &dir.join(saves::STATE_FILE))?;
    if &saved_model != model {
        bail!("{} was saved from another model than {}", dir.display(), run.model_config_path().display());
    }
    if state.lora.as_ref() != lora {
        bail!(
            "{} was saved with LoRA settings {:?}, this run has {:?} (train.mode and [lora] must match to resume)",
            dir.display(),
            state.lora,
            lora
        );
    }
    if state.examples_per_step != examples_per_step {
        bail!(
            "{} was saved by a run of {} examples per step; this one takes {} (micro_batch_size x grad_accum x ranks): keep them equal to resume",
            dir.display(),
            state.examples_per_step,
            examples_per_step
        );
    }
    Ok(saved)
}
