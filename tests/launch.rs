//! The command lines people type: `mpirun -n N shard-train --config FILE`, the launch/ scripts
//! (one machine, a hostfile, SLURM) and the 7B configs in configs/, planned without weights.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// `bash launch/SCRIPT ARGS` from the checkout's root, with this build's binary.
fn launch_script(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.current_dir(repo()).arg(Path::new("launch").join(script)).args(args).env("SHARD_TRAIN", env!("CARGO_BIN_EXE_shard-train"));
    cmd
}

fn output_of(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A temporary directory laid out as the checkout for config `name` of configs/: configs/NAME as
/// it is and tests/fixtures (a link), so that the config's relative paths resolve as in the
/// checkout and its run writes under the temporary runs/, not the checkout's.
fn checkout_layout_for(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("configs")).unwrap();
    std::fs::copy(repo().join("configs").join(name), tmp.path().join("configs").join(name)).unwrap();
    std::fs::create_dir(tmp.path().join("tests")).unwrap();
    std::os::unix::fs::symlink(fixtures(), tmp.path().join("tests/fixtures")).unwrap();
    tmp
}

/// The demo as the README gives it: no `train` subcommand, the config in configs/, in a copy of
/// the checkout's layout.
#[test]
fn shard_train_config_trains_the_tiny_demo() {
    let tmp = checkout_layout_for("tiny_full.toml");
    let mut cmd = mpirun(2);
    cmd.current_dir(tmp.path()).args(["--config", "configs/tiny_full.toml"]);
    let out_dir = tmp.path().join("runs/tiny_full");
    let run = launch(&mut cmd, out_dir, tmp);
    assert_losses_match(&tiny(), Mode::Full, &run);
    let header = String::from_utf8_lossy(&run.output.stdout);
    for line in [
        "world: 2 ranks on 1 node (2 per node); shard groups: 1 of 2 consecutive ranks, each rank holding 1/2 of the model states",
        "  all-gather, reduce-scatter (every unit, each micro-batch): within a shard group, over MPI: shared memory (one node)",
        "  all-reduce (token counts, losses, each step): all ranks, over MPI: shared memory (one node)",
    ] {
        assert!(header.lines().any(|l| l == line), "the header lacks {line:?}:\n{header}");
    }
    // Two ranks wait for each other at least in the scalar reductions; a step is more than that.
    for m in run.tiny_metrics() {
        let (exposed, seconds) = (m["exposed_comm_s"].as_f64().unwrap(), m["seconds"].as_f64().unwrap());
        assert!(exposed > 0.0 && exposed < seconds, "exposed communication {exposed} s of a {seconds} s step");
    }
    assert!(header.lines().any(|l| l.starts_with("step 1/") && l.contains(" tok/s  comm ") && l.contains("%")), "{header}");
}

/// The README's first fine-tune, in a copy of the checkout's layout: its
/// data preview shows the facts as text, the run trains, and `generate` on its export prints words.
#[test]
fn the_first_fine_tune_reads_as_words() {
    let tmp = checkout_layout_for("first_finetune.toml");
    let shard_train = |args: &[&str]| output_of(Command::new(env!("CARGO_BIN_EXE_shard-train")).current_dir(tmp.path()).args(args));

    let (ok, preview, stderr) = shard_train(&["data", "preview", "--config", "configs/first_finetune.toml", "--n", "1"]);
    assert!(ok, "{stderr}");
    assert!(preview.contains("⟦<s> The capital of France is⟧ Paris.</s>"), "{preview}");

    let mut cmd = mpirun(2);
    cmd.current_dir(tmp.path()).args(["train", "--config", "configs/first_finetune.toml"]);
    let out_dir = tmp.path().join("runs/first_finetune");
    let run = launch(&mut cmd, out_dir.clone(), tempfile::tempdir().unwrap());
    assert!(run.output.status.success(), "{}", String::from_utf8_lossy(&run.output.stderr));

    let final_dir = out_dir.join("final");
    let (ok, text, stderr) =
        shard_train(&["generate", "--model", final_dir.to_str().unwrap(), "--prompt", "The capital of Italy is", "--max-new-tokens", "4"]);
    assert!(ok, "{stderr}");
    // The prompt as text, then up to four of the tokenizer's tokens as text, not ids.
    let continuation = text.trim_start().strip_prefix("The capital of Italy is").unwrap_or_else(|| panic!("{text:?}"));
    assert!(!continuation.trim().is_empty() && continuation.split_whitespace().all(|w| w.parse::<u32>().is_err()), "{text:?}");
    assert!(stderr.contains(" for 1 prompt"), "{stderr}");
}

/// The 7B configs that the README sends to `data/`: one file is read in one format only, so that
/// a user who makes it for one config can run the others on theirs.
#[test]
fn the_7b_configs_read_one_format_per_data_file() {
    let mut formats = std::collections::BTreeMap::<String, String>::new();
    for name in ["full_ft.toml", "full_ft_1gpu.toml", "lora.toml", "qlora.toml"] {
        let text = std::fs::read_to_string(repo().join("configs").join(name)).unwrap();
        let data: toml::Table = text.parse::<toml::Table>().unwrap()["data"].as_table().unwrap().clone();
        let (path, format) = (data["path"].as_str().unwrap().to_owned(), data["format"].as_str().unwrap().to_owned());
        let seen = formats.entry(path.clone()).or_insert_with(|| format.clone());
        assert_eq!(*seen, format, "{name} reads {path} as {format}, another config as {seen}");
    }
}

/// An output.dir that one rank sees and another does not (here: rank 1 runs in its own mount
/// namespace with an empty file system over it, as a node-local directory on another machine
/// would be) stops the job before the data or the weights are loaded, naming the directory.
#[test]
fn output_dir_not_shared_by_the_ranks_is_refused() {
    if !Command::new("unshare").args(["-m", "true"]).status().is_ok_and(|s| s.success()) {
        // CI runs as root, where a namespace can always be made: there, not running is a failure.
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true and `unshare -m` (a mount namespace, root only) failed");
        println!("skipped: `unshare -m` (a mount namespace, root only) is not allowed here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let out_dir = shared.join("run");
    let config = tmp.path().join("run.toml");
    std::fs::write(&config, format!("{}\n[output]\ndir = {out_dir:?}\n", fixture_config(&tiny(), Mode::Full, 2, 2, 1))).unwrap();
    let (binary, config) = (env!("CARGO_BIN_EXE_shard-train"), config.to_str().unwrap());
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "--allow-run-as-root", "-n", "1", binary, "--config", config, ":", "-n", "1"]);
    cmd.args([
        "unshare",
        "-m",
        "sh",
        "-c",
        "mount -t tmpfs none \"$0\" && exec \"$@\"",
        shared.to_str().unwrap(),
        binary,
        "--config",
        config,
    ]);
    let run = launch(&mut cmd, out_dir.clone(), tmp);
    assert!(!run.output.status.success());
    let stderr = run.stderr();
    let expected =
        format!("output.dir = {} is not shared by the ranks: rank(s) 1 of 2 do not see the file rank 0 wrote there", out_dir.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!out_dir.join("data").exists() && !out_dir.join("metrics.jsonl").exists(), "stopped before the data was prepared");
}

/// A hostfile naming this machine: what a multi-machine launch runs, here on localhost.
#[test]
fn hostfile_launch_on_localhost_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let hostfile = tmp.path().join("hosts");
    std::fs::write(&hostfile, "# this machine, two ranks\nlocalhost slots=2\n").unwrap();
    let out_dir = tmp.path().join("run");
    let config = tmp.path().join("run.toml");
    std::fs::write(&config, format!("{}\n[output]\ndir = {out_dir:?}\nexport = \"none\"\n", fixture_config(&tiny(), Mode::Full, 2, 2, 1)))
        .unwrap();
    let mut cmd = launch_script("hostfile.sh", &[hostfile.to_str().unwrap(), "--config", config.to_str().unwrap()]);
    let run = launch(&mut cmd, out_dir, tmp);
    assert_losses_match(&tiny(), Mode::Full, &run);
}

/// Ctrl-C at a terminal sends SIGINT to the launcher's whole process group: the run finishes its
/// step, saves and says how to resume, instead of mpirun killing the ranks mid-step.
#[test]
fn ctrl_c_to_the_launcher_saves_and_says_how_to_resume() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("run");
    let config = write_config(tmp.path(), &config(&tiny(), Mode::Full, 2, 2, 100_000), &out_dir, "export = \"none\"\n");
    let mut cmd = launch_script("local.sh", &["2", "train", "--config", config.to_str().unwrap()]);
    let job = cmd.process_group(0).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let metrics = out_dir.join("metrics.jsonl");
    wait_for("the first step", Duration::from_secs(120), || std::fs::read_to_string(&metrics).is_ok_and(|m| m.lines().count() >= 1));
    assert!(Command::new("kill").args(["-s", "INT", "--", &format!("-{}", job.id())]).status().unwrap().success());
    let out = job.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("stopping after the current step and saving"), "{stderr}");
    let stopped = stdout.lines().find(|l| l.starts_with("stopped on request after step ")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(stopped.ends_with("resume with --resume latest"), "{stopped}");
    let step: u64 = stopped["stopped on request after step ".len()..].split(':').next().unwrap().parse().unwrap();
    let latest = std::fs::read_to_string(out_dir.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), format!("step-{step:07}"));
}

#[test]
fn hostfile_that_cannot_hold_the_ranks_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let hostfile = tmp.path().join("hosts");
    let config = tmp.path().join("run.toml"); // never read: the wrapper refuses first
    std::fs::write(&hostfile, "localhost slots=2\n").unwrap();
    let (ok, _, stderr) =
        output_of(&mut launch_script("hostfile.sh", &["-n", "3", hostfile.to_str().unwrap(), "--config", config.to_str().unwrap()]));
    assert!(
        !ok && stderr.contains("-n 3 ranks") && stderr.contains("names 2 slots") && stderr.contains(hostfile.to_str().unwrap()),
        "{stderr}"
    );

    std::fs::write(&hostfile, "node1 slots=4\n\nnode2   # slots forgotten\n").unwrap();
    let (ok, _, stderr) = output_of(&mut launch_script("hostfile.sh", &[hostfile.to_str().unwrap(), "--config", config.to_str().unwrap()]));
    assert!(!ok && stderr.contains(&format!("{}:3:", hostfile.display())) && stderr.contains("names no slots"), "{stderr}");
}

/// The wrappers' command lines, printed by --dry-run: what docs/cluster-launch.md shows.
#[test]
fn launch_scripts_print_their_command_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let hostfile = tmp.path().join("hosts");
    std::fs::write(&hostfile, "node1 slots=8\nnode2 slots=8\n").unwrap();
    let binary = env!("CARGO_BIN_EXE_shard-train");
    let (ok, line, stderr) = output_of(
        launch_script("hostfile.sh", &["--dry-run", hostfile.to_str().unwrap(), "--config", "configs/full_ft.toml"])
            .env("NCCL_SOCKET_IFNAME", "eth0"),
    );
    assert!(ok, "{stderr}");
    for piece in [
        "mpirun -n 16 --hostfile",
        "--map-by slot --bind-to none",
        "-x PATH",
        "-x NCCL_SOCKET_IFNAME",
        &format!("{binary} --config configs/full_ft.toml"),
    ] {
        assert!(line.contains(piece), "{piece:?} missing from {line}");
    }

    let (ok, line, _) = output_of(&mut launch_script("local.sh", &["--dry-run", "2", "--config", "configs/tiny_full.toml"]));
    assert!(
        ok && line.starts_with("mpirun -n 2 ")
            && line.contains("--bind-to none")
            && line.ends_with(&format!("{binary} --config configs/tiny_full.toml\n")),
        "{line}"
    );
}

/// `--dry-run` anywhere on the line (never launching the job), a usage line instead of a bash
/// error when arguments are missing, and `max_slots=M` read as OpenMPI's cap, not as the slots.
#[test]
fn launch_scripts_take_dry_run_anywhere_and_say_their_usage() {
    for script in ["local.sh", "hostfile.sh", "slurm.sbatch"] {
        let out = launch_script(script, &[]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{script}: {stderr}");
        assert!(stderr.starts_with(&format!("{script}: usage: ")) && !stderr.contains("line "), "{script}: {stderr}");
    }
    let (ok, line, stderr) = output_of(&mut launch_script("local.sh", &["2", "--config", "configs/tiny_full.toml", "--dry-run"]));
    assert!(ok && line.starts_with("mpirun -n 2 ") && line.ends_with(" --config configs/tiny_full.toml\n"), "{line}{stderr}");

    let tmp = tempfile::tempdir().unwrap();
    let hostfile = tmp.path().join("hosts");
    std::fs::write(&hostfile, "node1 slots=2 max_slots=4\nnode2 max_slots=8 slots=1\n").unwrap();
    let (ok, line, stderr) =
        output_of(&mut launch_script("hostfile.sh", &[hostfile.to_str().unwrap(), "--config", "configs/full_ft.toml", "--dry-run"]));
    assert!(ok && line.starts_with("mpirun -n 3 --hostfile"), "{line}{stderr}");
}

#[test]
fn slurm_script_parses_and_prints_its_launch_line() {
    let (ok, _, stderr) = output_of(Command::new("bash").current_dir(repo()).args(["-n", "launch/slurm.sbatch"]));
    assert!(ok, "bash -n: {stderr}");
    let binary = env!("CARGO_BIN_EXE_shard-train");

    let (ok, line, stderr) = output_of(&mut launch_script("slurm.sbatch", &["--dry-run", "configs/full_ft.toml"]));
    assert!(ok, "{stderr}");
    assert_eq!(line, format!("srun --mpi=pmix --cpu-bind=none --kill-on-bad-exit=1 {binary} --config configs/full_ft.toml\n"));
    assert!(stderr.contains("2 node(s) x 8 rank(s), no allocation"), "{stderr}");

    let mut allocation = launch_script("slurm.sbatch", &["--dry-run", "configs/full_ft.toml", "--resume", "latest"]);
    allocation.envs([
        ("SHARD_TRAIN_LAUNCHER", "mpirun"),
        ("SLURM_JOB_NUM_NODES", "4"),
        ("SLURM_NTASKS_PER_NODE", "4"),
        ("SLURM_JOB_ID", "77"),
    ]);
    let (ok, line, stderr) = output_of(&mut allocation);
    assert!(ok && stderr.contains("4 node(s) x 4 rank(s), job 77"), "{stderr}");
    assert!(
        line.starts_with("mpirun ")
            && line.contains("--bind-to none -x PATH")
            && line.ends_with("--config configs/full_ft.toml --resume latest\n"),
        "{line}"
    );

    let (ok, _, stderr) =
        output_of(launch_script("slurm.sbatch", &["--dry-run", "configs/full_ft.toml"]).env("SHARD_TRAIN_LAUNCHER", "ssh"));
    assert!(!ok && stderr.contains("SHARD_TRAIN_LAUNCHER = \"ssh\": expected srun or mpirun"), "{stderr}");
    let (ok, _, stderr) = output_of(&mut launch_script("slurm.sbatch", &["--dry-run", "configs/no_such.toml"]));
    assert!(!ok && stderr.contains("configs/no_such.toml: no such file"), "{stderr}");
}

/// `plan --config` of a 7B config: its first comment's command, and whether it fits its GPUs.
fn plan_config(name: &str, ranks: usize) -> serde_json::Value {
    let path = format!("configs/{name}.toml");
    let text = std::fs::read_to_string(repo().join(&path)).unwrap();
    let command = text.lines().take_while(|l| l.starts_with('#')).find(|l| l.contains("shard-train --config"));
    assert!(command.is_some_and(|c| c.contains(&path)), "{path} should start with the command that runs it");
    let ranks = ranks.to_string();
    let (ok, json, stderr) = output_of(
        Command::new(env!("CARGO_BIN_EXE_shard-train")).current_dir(repo()).args(["plan", "--config", &path, "--ranks", &ranks, "--json"]),
    );
    assert!(ok, "{path}: {stderr}");
    serde_json::from_str(&json).unwrap()
}

fn assert_fits(plan: &serde_json::Value, gpus: u64, gpu: &str) {
    let strategy = &plan["strategies"][0];
    assert_eq!((strategy["gpus"].as_u64(), strategy["fits"].as_bool()), (Some(gpus), Some(true)), "{strategy}");
    assert_eq!(plan["assumptions"]["hardware"]["name"], gpu);
}

/// configs/full_ft.toml: Mistral-7B full fine-tuning, bf16, 10,000 examples of 1,024 tokens, on
/// 4 x A100 80GB; planned from the config.json in models/, without weights or data.
#[test]
fn full_ft_config_fits_4_a100_80gb() {
    let plan = plan_config("full_ft", 4);
    assert_fits(&plan, 4, "a100-80gb");
    let strategy = &plan["strategies"][0];
    assert_eq!(strategy["strategy"], "zero3-full");
    assert_eq!(plan["assumptions"]["precision"], "bf16");
    assert_eq!(plan["assumptions"]["seq_len"], 1024);
    let sequences = strategy["hours"].as_f64().unwrap() * 3600.0 * strategy["tokens_per_s"].as_f64().unwrap() / 1024.0;
    assert!((sequences - 10_000.0).abs() < 1.0, "the run's length is 10,000 sequences, found {sequences}");
}

#[test]
fn lora_config_fits_2_a100_40gb() {
    let plan = plan_config("lora", 2);
    assert_fits(&plan, 2, "a100-40gb");
    assert_eq!(plan["strategies"][0]["strategy"], "zero3-lora");
}

#[test]
fn qlora_config_fits_one_a100_40gb() {
    let plan = plan_config("qlora", 1);
    assert_fits(&plan, 1, "a100-40gb");
    // Planned as the engine runs it: the base's projections held and gathered as NF4 records.
    assert_eq!(plan["strategies"][0]["strategy"], "qlora");
    let shards = plan["strategies"][0]["per_rank_bytes"]["compute_shards"].as_u64().unwrap();
    assert!(shards < 5 << 30, "NF4 projections (3.6 GB) and bf16 embeddings: {shards} bytes");
}

/// `plan --config` reads the model's config.json and nothing else of the run's inputs: no
/// weights, no data, no tokenizer; `train` still refuses a run whose inputs are missing.
#[test]
fn plan_needs_only_the_models_config_json() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(fixtures().join("mistral-7b-v0.1/config.json"), model.join("config.json")).unwrap();
    let config = tmp.path().join("run.toml");
    std::fs::write(&config, "[model]\npath = \"model\"\n[data]\npath = \"not-yet.jsonl\"\nformat = \"text\"\n[runtime]\ndevice = \"cuda\"\ngpu = \"a100-80gb\"\n").unwrap();
    let plan = |config: &Path| {
        output_of(Command::new(env!("CARGO_BIN_EXE_shard-train")).args(["plan", "--config", config.to_str().unwrap(), "--ranks", "2"]))
    };
    let (ok, table, stderr) = plan(&config);
    assert!(ok && table.contains("7,241,732,096 parameters"), "{stderr}");

    let (ok, _, stderr) = output_of(Command::new(env!("CARGO_BIN_EXE_shard-train")).args(["--config", config.to_str().unwrap()]));
    assert!(!ok && stderr.contains("`data.path`") && stderr.contains("not-yet.jsonl: no such file"), "{stderr}");

    std::fs::remove_dir_all(&model).unwrap();
    let (ok, _, stderr) = plan(&config);
    assert!(!ok && stderr.contains("model.path: the model's config.json") && stderr.contains("model/config.json"), "{stderr}");
}
