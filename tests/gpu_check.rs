//! The CPU-side parts of the prepared GPU check (tests/gpu/check.sh, run where a GPU is lent):
//! the scripts parse, `check.sh --cpu` trains its tiny rows and prints its table, the configs it
//! makes for the Mistral-7B-shape rows plan, and its throughput row reads a GPU run's summary.

use std::path::PathBuf;
use std::process::Command;

fn gpu_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/gpu")
}

fn report(args: &[&str]) -> String {
    let out = Command::new("python3").arg(gpu_dir().join("report.py")).args(args).output().unwrap();
    assert!(out.status.success(), "report.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn has_python3() -> bool {
    let found = Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        println!("skipped: no python3 (tests/gpu/report.py needs it)");
    }
    found
}

#[test]
fn gpu_check_scripts_parse() {
    for name in ["check.sh", "bundle.sh", "gpu_env.sh"] {
        let status = Command::new("bash").arg("-n").arg(gpu_dir().join(name)).status().unwrap();
        assert!(status.success(), "bash -n {name}");
    }
}

/// Everything but the GPU: the tiny rows (CPU against the CPU engine, bf16 against its
/// reference, world 2 over MPI), then the throughput row of the tiny run, with its exposed
/// communication and its plan.
#[test]
fn the_cpu_rows_pass_and_the_table_prints() {
    if !has_python3() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let run = check_on_cpu(out.path(), &[]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    for label in
        ["tiny full f32 (IEEE matmul), cpu vs CPU", "tiny lora f32 (IEEE matmul), cpu vs CPU", "tiny full bf16, cpu vs bf16 reference"]
    {
        assert!(stdout.lines().any(|l| l.starts_with(label) && l.ends_with("PASS")), "{label}:\n{stdout}");
    }
    let throughput = stdout.lines().find(|l| l.starts_with("tiny full f32 on cpu")).expect("the throughput row");
    for part in ["tok/s (plan ", "MFU ", "exposed comm ", "engine peak ", "; plan "] {
        assert!(throughput.contains(part), "{part:?} in {throughput}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

/// `tests/gpu/check.sh --cpu` with its work dir in `out` and `env` added.
fn check_on_cpu(out: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    Command::new("bash")
        .arg(gpu_dir().join("check.sh"))
        .arg("--cpu")
        .env("SHARD_TRAIN", env!("CARGO_BIN_EXE_shard-train"))
        .env("OUT", out)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// GPU minutes are few: a run past RUN_TIMEOUT is a FAIL row (and the check fails),
/// and once BUDGET_S is spent the remaining rows say they were not run.
#[test]
fn a_run_past_its_timeout_fails_its_row_and_a_spent_budget_skips_the_rest() {
    if !has_python3() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let run = check_on_cpu(out.path(), &[("RUN_TIMEOUT", "0.01")]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(!run.status.success(), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("ref-full") && l.contains("timed out after 0.01 s (RUN_TIMEOUT)") && l.ends_with("FAIL")),
        "{stdout}"
    );

    let out = tempfile::tempdir().unwrap();
    let run = check_on_cpu(out.path(), &[("BUDGET_S", "0")]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}");
    for label in ["tiny full f32", "tiny lora f32", "tiny full bf16", "world 2 on one cpu"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(label) && l.contains("not run: the check's time budget (BUDGET_S = 0 s) is spent")),
            "{label}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("training "), "nothing trains:\n{stdout}");
}

/// On a GPU machine set up from pip wheels (NCCL's pip wheel with only libnccl.so.2, the CUDA 13
/// wheels' nvidia/cu13/lib, nvcc on PATH, no /usr/local/cuda), gpu_env.sh links libnccl.so, finds
/// the toolkit and puts its lib64 and the wheels' folder (NVRTC) on LD_LIBRARY_PATH; where
/// libnccl.so is on LD_LIBRARY_PATH already, it leaves it.
#[test]
fn gpu_env_links_the_nccl_wheel_and_finds_the_toolkit_and_nvrtc() {
    if !has_python3() {
        return;
    }
    if std::path::Path::new("/usr/local/cuda/include/cuda.h").exists() {
        println!("skipped: this machine has /usr/local/cuda, so CUDA_PATH is left unset");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let wheel = tmp.path().join("site/nvidia/nccl/lib");
    std::fs::create_dir_all(&wheel).unwrap();
    std::fs::write(wheel.join("libnccl.so.2"), "").unwrap();
    let cu13 = tmp.path().join("site/nvidia/cu13/lib");
    std::fs::create_dir_all(&cu13).unwrap();
    std::fs::write(cu13.join("libnvrtc.so.13"), "").unwrap();
    let toolkit = tmp.path().join("cuda-13.0");
    let lib64 = toolkit.join("lib64");
    std::fs::create_dir_all(toolkit.join("bin")).unwrap();
    std::fs::create_dir_all(&lib64).unwrap();
    std::fs::write(toolkit.join("bin/nvcc"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(toolkit.join("bin/nvcc"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let links = tmp.path().join("links");
    let script = format!("source {:?} {links:?} && echo \"LD=$LD_LIBRARY_PATH\" && echo \"CUDA=$CUDA_PATH\"", gpu_dir().join("gpu_env.sh"));
    let run = |ld: &str| {
        let out = Command::new("bash")
            .args(["-c", &script])
            .env("PYTHONPATH", tmp.path().join("site"))
            .env("PATH", format!("{}:{}", toolkit.join("bin").display(), std::env::var("PATH").unwrap()))
            .env("LD_LIBRARY_PATH", ld)
            .env_remove("CUDA_PATH")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let out = run("");
    assert_eq!(std::fs::read_link(links.join("libnccl.so")).unwrap(), wheel.join("libnccl.so.2"));
    assert!(out.contains(&format!("LD={}:{}:{}:{}\n", cu13.display(), lib64.display(), links.display(), wheel.display())), "{out}");
    assert!(out.contains(&format!("CUDA={}\n", toolkit.display())), "{out}");
    assert!(out.contains("gpu env: linked ") && out.contains("gpu env: CUDA_PATH="), "{out}");
    assert!(out.contains("gpu env: LD_LIBRARY_PATH gains ") && out.contains("NVRTC"), "{out}");

    let out = run(&format!("{}:{}:{}", links.display(), cu13.display(), lib64.display()));
    assert!(out.contains(&format!("LD={}:{}:{}\n", links.display(), cu13.display(), lib64.display())), "{out}");
    assert!(!out.contains("gpu env: linked") && !out.contains("gains"), "{out}");
}

/// check.sh sources gpu_env.sh under `set -u`; a machine without LD_LIBRARY_PATH (and without
/// NCCL's wheel) must get through it.
#[test]
fn gpu_env_runs_under_set_u_without_ld_library_path() {
    let links = tempfile::tempdir().unwrap();
    let script = format!("set -euo pipefail; source {:?} {:?}; echo sourced", gpu_dir().join("gpu_env.sh"), links.path());
    let out = Command::new("bash").args(["-c", &script]).env_remove("LD_LIBRARY_PATH").env("PYTHONPATH", links.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("sourced"), "{stderr}");
    assert!(!stderr.contains("unbound variable"), "{stderr}");
}

/// The 7B-shape configs (4 of 32 layers, seq 4096, bf16 on cuda) are valid run configs that the
/// planner fits on one H100, full FT, LoRA and QLoRA (whose checkpoint the check writes first).
#[test]
fn the_7b_shape_configs_plan_on_one_h100() {
    if !has_python3() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mistral = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mistral-7b-v0.1/config.json");
    for mode in ["full", "lora", "qlora"] {
        let config = report(&["shapes-config", mistral.to_str().unwrap(), mode, "h100-80gb", "2", work.path().to_str().unwrap()]);
        let path = work.path().join(format!("{mode}.toml"));
        std::fs::write(&path, config).unwrap();
        let plan =
            Command::new(env!("CARGO_BIN_EXE_shard-train")).args(["plan", "--config", path.to_str().unwrap(), "--json"]).output().unwrap();
        assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
        let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
        let strategy = &plan["strategies"][0];
        assert_eq!(plan["model"]["layers"], 4);
        assert_eq!((plan["assumptions"]["precision"].as_str(), plan["assumptions"]["seq_len"].as_u64()), (Some("bf16"), Some(4096)));
        assert_eq!(strategy["fits"], true, "{mode}: {strategy}");
        assert!(strategy["flops_per_token"].as_f64().unwrap() > 1e9);
        // A throughput run keeps nothing: no save of 18 GB of optimizer states.
        assert!(std::fs::read_to_string(&path).unwrap().contains("\nsave_at_end = false\n"));
    }
}

/// The PyTorch anchor reports two labelled rows, eager attention (as the engine's) and SDPA
/// (transformers' default); here on the CPU with the tiny model, as the check runs it on the GPU.
#[test]
fn the_pytorch_anchor_reports_eager_and_sdpa_rows() {
    let has_torch = Command::new("python3").args(["-c", "import torch, transformers"]).output().is_ok_and(|o| o.status.success());
    if !has_torch {
        println!("skipped: no torch and transformers for python3");
        return;
    }
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-mistral/config.json");
    let rows = report(&["torch-anchor", config.to_str().unwrap(), "32", "2"]);
    let labels: Vec<&str> = rows.lines().map(|r| r.split('\t').next().unwrap()).collect();
    assert_eq!(
        labels,
        ["PyTorch anchor, 7B shapes 4 layers full bf16, eager attention", "PyTorch anchor, 7B shapes 4 layers full bf16, sdpa attention"],
        "{rows}"
    );
    assert!(rows.lines().all(|r| r.contains(" tok/s on cpu")), "{rows}");
}

/// On a GPU the throughput row adds the device's memory from summary.json (rank 0's).
#[test]
fn the_throughput_row_reads_the_device_memory_of_a_gpu_run() {
    if !has_python3() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let run = work.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let step = |n: u64| serde_json::json!({"step": n, "tokens_per_s": 1000.0 * n as f64, "seconds": 4.0, "exposed_comm_s": 0.4, "peak_engine_bytes": 20u64 << 30});
    std::fs::write(run.join("metrics.jsonl"), format!("{}\n{}\n", step(1), step(2))).unwrap();
    let device = serde_json::json!({"pool_reserved_bytes": 22u64 << 30, "pool_in_use_bytes": 3u64 << 30, "device_used_bytes": 24u64 << 30});
    std::fs::write(run.join("summary.json"), serde_json::json!({"device_memory": [device]}).to_string()).unwrap();
    let plan = serde_json::json!({
        "assumptions": {"precision": "bf16", "hardware": {"peak_bf16_flops": 1e15, "peak_f32_flops": 6e13}},
        "strategies": [{"flops_per_token": 1e11, "tokens_per_s": 4000.0, "per_rank_bytes": {"total": 21u64 << 30}}],
    });
    let plan_path = work.path().join("plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let row = report(&["throughput", "7B", run.join("metrics.jsonl").to_str().unwrap(), plan_path.to_str().unwrap()]);
    // The second step only (the first compiles the kernels): 2000 tok/s x 1e11 FLOPs = 20% of 1e15.
    assert_eq!(
        row.trim_end(),
        "7B\t2,000 tok/s (plan 4,000), MFU 20.0%, exposed comm 10%; engine peak 20.00 GiB, cubecl pool reserved 22.00 GiB, device used 24.00 GiB; plan 21.00 GiB\tINFO"
    );
}

/// bundle.sh's folder is all a GPU machine without OpenMPI needs: with env.sh sourced, every
/// library the binary and the bundled mpirun load (ldd) resolves, and inside the bundle but for
/// the C runtime (glibc, libgcc), so that the machine's own OpenMPI, if any, plays no part; and
/// env.sh keeps OpenMPI to one machine's transports. bundle.sh downloads Debian packages: where
/// it cannot (no apt-get, no network), skipped, except under CI=true.
#[test]
fn the_bundle_resolves_every_library_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("gpu-bundle");
    let made = Command::new("bash")
        .arg(gpu_dir().join("bundle.sh"))
        .env("SHARD_TRAIN", env!("CARGO_BIN_EXE_shard-train"))
        .env("BUNDLE_DIR", &bundle)
        .output()
        .unwrap();
    if !made.status.success() {
        let why = String::from_utf8_lossy(&made.stderr);
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but bundle.sh failed:\n{why}");
        println!("skipped: bundle.sh cannot make a bundle on this machine:\n{why}");
        return;
    }
    let script = "source \"$1/env.sh\" && echo \"pml=$OMPI_MCA_pml btl=$OMPI_MCA_btl\" \
                  && ldd \"$SHARD_TRAIN\" \"$(readlink -f \"$(command -v mpirun)\")\"";
    let out = Command::new("bash").args(["-c", script, "bash"]).arg(&bundle).env_remove("LD_LIBRARY_PATH").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("pml=ob1 btl=self,vader\n"), "{stdout}");
    assert!(!stdout.contains("not found"), "{stdout}");
    let c_runtime = ["libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0", "libdl.so.2", "librt.so.1"];
    let outside: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.trim().split_once(" => "))
        .filter(|(name, path)| !c_runtime.contains(name) && !path.starts_with(bundle.to_str().unwrap()))
        .map(|(name, _)| name)
        .collect();
    assert!(outside.is_empty(), "libraries found outside the bundle: {outside:?}\n{stdout}");
    for needed in ["libmpi.so.40", "libudev.so.1", "libhwloc.so.15"] {
        assert!(stdout.contains(&format!("{needed} => {}", bundle.display())), "{needed}:\n{stdout}");
    }
}

/// `check.sh --dry-run`: the rows in the order that fails cheapest first, each with its time
/// budget, summing to the `total budget` line, at most 420 s; the one-GPU world 2 row only when
/// asked. Nothing runs (no binary is needed).
#[test]
fn the_dry_run_lists_the_rows_cheapest_first_within_420_s() {
    let dry_run = |args: &[&str]| {
        let out = Command::new("bash")
            .arg(gpu_dir().join("check.sh"))
            .arg("--dry-run")
            .args(args)
            .env("SHARD_TRAIN", "/nonexistent")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let (rows, total) = stdout.trim_end().rsplit_once('\n').unwrap_or_else(|| panic!("{stdout}"));
        let total: u64 = total.strip_prefix("total budget: ").and_then(|t| t.strip_suffix(" s")).unwrap().parse().unwrap();
        let rows: Vec<(String, u64)> = rows
            .lines()
            .map(|line| {
                let (label, budget) = line.split_once('\t').unwrap_or_else(|| panic!("{line}"));
                (label.to_string(), budget.strip_suffix(" s").unwrap().parse().unwrap())
            })
            .collect();
        assert_eq!(rows.iter().map(|(_, b)| b).sum::<u64>(), total, "{stdout}");
        (rows, total)
    };
    let (rows, total) = dry_run(&[]);
    assert!(total <= 420, "{rows:?}");
    let position = |label: &str| rows.iter().position(|(l, _)| l == label).unwrap_or_else(|| panic!("{label} in {rows:?}"));
    let order = [
        "tiny full f32 (IEEE matmul)",
        "tiny lora f32 (IEEE matmul)",
        "tiny full bf16",
        "7B shapes 4 layers full bf16",
        "7B shapes 4 layers lora bf16",
        "7B shapes 4 layers qlora bf16",
    ];
    assert!(order.windows(2).all(|w| position(w[0]) < position(w[1])), "{rows:?}");
    assert_eq!(position("tiny full f32 (IEEE matmul)"), 0);
    assert!(position("tiny full f32 (IEEE matmul), MPI collectives") < position("tiny full bf16"), "{rows:?}");
    assert!(!rows.iter().any(|(l, _)| l.contains("world 2")), "{rows:?}");

    let (asked, _) = dry_run(&["--world-2"]);
    assert_eq!(asked.last().unwrap().0, "world 2 on one cuda", "{asked:?}");
    assert_eq!(asked.len(), rows.len() + 1);
}
