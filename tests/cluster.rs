//! Two nodes on one machine: jobs started through the launch/ scripts on "nodes" nodeA and nodeB,
//! each a UTS namespace with a host name of its own that OpenMPI's rsh agent (tests/cluster/node.sh)
//! enters where ssh would log in to another machine. The ranks reach each other over TCP on lo
//! only (addresses in 127.0.0.0/8), no shared memory between them. What this shows of a real
//! cluster and what it does not: docs/clusters.md.
//!
//! Making namespaces needs root; where they cannot be made the tests say so and pass, except
//! under CI=true, where that fails them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const RANKS_PER_NODE: usize = 3;
const TWO_NODES: [&str; 2] = ["nodeA", "nodeB"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The fixture with 6 examples a step: 3 ranks on each of 2 nodes, a micro-batch of 1.
fn window() -> PathBuf {
    fixtures().join("tiny-mistral-window")
}

/// Whether this machine can make the nodes; when not, says why (a skipped test), or under CI=true
/// fails the test.
fn can_make_nodes() -> bool {
    let made = Command::new("unshare").args(["--uts", "--mount", "true"]).status().is_ok_and(|s| s.success());
    if !made {
        let why = "`unshare --uts --mount` (namespaces, root only) is not allowed here, so the two nodes cannot be made";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}; CI=true: the CI machine must run the two-node tests");
        eprintln!("skipped: {why}");
    }
    made
}

/// OpenMPI reaching the nodes through tests/cluster/node.sh, over TCP on lo only (its addresses,
/// 127.0.0.0/8, are the only ones used), with no shared-memory transport between ranks. Its
/// session directories go under the test's `dir`: the nodes share this machine's /tmp, where a
/// node's daemon could meet the one of the test before still removing /tmp/ompi.HOST.UID
/// ("mkdir: File exists", orte_init failed).
fn on_the_nodes<'c>(cmd: &'c mut Command, dir: &Path) -> &'c mut Command {
    cmd.env("SHARD_TRAIN", env!("CARGO_BIN_EXE_shard-train"))
        .env("OMPI_MCA_orte_tmpdir_base", dir)
        .env("OMPI_MCA_plm_rsh_agent", repo().join("tests/cluster/node.sh"))
        .env("OMPI_MCA_btl", "tcp,self")
        .env("OMPI_MCA_btl_tcp_if_include", "lo")
        .env("OMPI_MCA_oob_tcp_if_include", "lo")
}

/// `launch/hostfile.sh HOSTFILE ARGS` on `nodes`, 3 slots each (the hostfile is written to `dir`).
fn hostfile_launch(dir: &Path, nodes: &[&str], args: &[&str]) -> Command {
    let hostfile = dir.join("hostfile");
    std::fs::write(&hostfile, nodes.iter().map(|node| format!("{node} slots={RANKS_PER_NODE}\n")).collect::<String>()).unwrap();
    let mut cmd = Command::new("bash");
    cmd.current_dir(repo()).arg("launch/hostfile.sh").arg(&hostfile).args(args);
    on_the_nodes(&mut cmd, dir);
    cmd
}

/// `runtime.shard_size = "node"` on the window fixture, `steps` steps (the reference's when
/// `None`) on `ranks` ranks.
fn node_sharded(ranks: usize, steps: Option<u64>) -> String {
    let mut config = fixture_config(&window(), Mode::Full, ranks, 6 / ranks, 1);
    if let Some(steps) = steps {
        let reference_steps = reference_json(&window())["steps"].as_u64().unwrap();
        config = config.replace(&format!("\nsteps = {reference_steps}\n"), &format!("\nsteps = {steps}\n"));
    }
    format!("{config}[runtime]\nshard_size = \"node\"\ntimeout_s = 20\n")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The lines of the run's header that say where the ranks ran.
fn layout_lines(header: &str) -> Vec<&str> {
    header.lines().filter(|l| l.starts_with("world: ") || l.starts_with("nodes: ")).collect()
}

const TWO_NODE_LAYOUT: [&str; 2] = [
    "world: 6 ranks on 2 nodes (3 per node); shard groups: 2 of 3 consecutive ranks, each rank holding 1/3 of the model states",
    "nodes: nodeA (ranks 0-2), nodeB (ranks 3-5)",
];

/// 3 ranks on each node, sharded by node: the header names both hosts, each node is a shard
/// group, and the run trains as the same config on one node does (and as the reference), and bit
/// for bit as the same groups on one node do.
#[test]
fn three_ranks_on_each_of_two_nodes_shard_by_node_and_train_as_one_node() {
    if !can_make_nodes() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("run");
    let config = write_config(tmp.path(), &node_sharded(6, None), &out_dir, "export = \"hf\"\n");
    let two_nodes = launch(&mut hostfile_launch(tmp.path(), &TWO_NODES, &["--config", config.to_str().unwrap()]), out_dir, tmp);
    assert_full_ft_matches_reference(&window(), &two_nodes);
    let header = stdout(&two_nodes.output);
    assert_eq!(layout_lines(&header), TWO_NODE_LAYOUT, "{header}");
    assert!(
        header.contains("within a shard group, over MPI: shared memory (one node)")
            && header.contains("across the 2 groups, over MPI: shared memory inside a node, the network between 2 nodes"),
        "the gathers stay in a node, the grad shards cross between them: {header}"
    );

    let one_node = train(6, &node_sharded(6, None), "hf", &[]);
    assert_full_ft_matches_reference(&window(), &one_node);
    assert!(stdout(&one_node.output).contains("world: 6 ranks on 1 node (6 per node); shard groups: 1 of 6"));
    for (step, (a, b)) in losses(&two_nodes).into_iter().zip(losses(&one_node)).enumerate() {
        assert!((a - b).abs() < 1e-5, "step {}: loss {a} on two nodes, {b} on one", step + 1);
    }
    let (ours, theirs) = (two_nodes.export(), one_node.export());
    for name in theirs.names() {
        assert_close_params(
            name,
            &ours.read_f32(name).unwrap(),
            &theirs.read_f32(name).unwrap(),
            ParamTolerance::f32_training(&window(), Mode::Full),
        );
    }

    // The same groups on one machine (shard_size = 3): the same sums in the same order, over
    // shared memory instead of TCP, give the same bits.
    let same_groups = train(6, &node_sharded(6, None).replace("shard_size = \"node\"", "shard_size = 3"), "hf", &[]);
    same_groups.assert_success();
    assert_eq!(losses(&two_nodes), losses(&same_groups));
    let theirs = same_groups.export();
    for name in theirs.names() {
        assert!(ours.read_f32(name).unwrap() == theirs.read_f32(name).unwrap(), "{name}: not the same bits");
    }
}

fn losses(run: &Run) -> Vec<f64> {
    run.metrics().iter().map(|m| m["loss"].as_f64().unwrap()).collect()
}

/// Every process started under `parent`, at any depth.
fn descendants(parent: u32) -> Vec<u32> {
    let mut found = children_of(parent);
    let mut i = 0;
    while i < found.len() {
        found.extend(children_of(found[i]));
        i += 1;
    }
    found
}

fn latest_step(out_dir: &Path) -> u64 {
    let latest = std::fs::read_to_string(out_dir.join("checkpoints/latest")).unwrap();
    latest.trim().trim_start_matches("step-").parse().unwrap_or_else(|_| panic!("checkpoints/latest = {latest:?}"))
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// nodeB lost (its 3 ranks killed) in the middle of the save after step 3 of a run that saves
/// every step: the job ends well within runtime.timeout_s, and nodeA alone (3 ranks, 2 examples
/// each a micro-batch) resumes from the last save, step 2, and takes step 3 as the reference does.
#[test]
fn a_lost_node_ends_the_job_and_one_node_resumes_from_the_last_save() {
    if !can_make_nodes() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("run");
    let saves = "export = \"none\"\nsave_every = 1\n";
    let config = write_config(tmp.path(), &node_sharded(6, Some(100_000)), &out_dir, saves);
    let mut launch = hostfile_launch(tmp.path(), &TWO_NODES, &["--config", config.to_str().unwrap()]);
    let mut job = spawn(launch.env("SHARD_TRAIN_TEST_HOLD_SAVE", "3"));
    wait_for("the save after step 3", Duration::from_secs(90), || out_dir.join("saving-rank-0.pid").exists());
    let node_b: Vec<u32> =
        descendants(job.id()).into_iter().filter(|&pid| rank_of(pid).is_some_and(|rank| rank >= RANKS_PER_NODE)).collect();
    assert_eq!(node_b.len(), RANKS_PER_NODE, "nodeB's ranks under the launch");
    for pid in &node_b {
        // The rank may have ended on its own already if another was found dead first.
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let lost = Instant::now();
    let ended = job.wait().unwrap();
    let waited = lost.elapsed();
    assert!(!ended.success(), "the job must fail when a node is lost");
    assert!(waited < Duration::from_secs(20), "the job ended {waited:?} after nodeB was lost (runtime.timeout_s = 20)");
    wait_for_the_lock_holder(&out_dir);
    assert_eq!(latest_step(&out_dir), 2, "the save of step 3 was cut short");

    let resume_dir = tmp.path().join("resume");
    std::fs::create_dir(&resume_dir).unwrap();
    let resume_config = write_config(&resume_dir, &node_sharded(3, Some(100_000)), &out_dir, saves);
    let mut resume = hostfile_launch(&resume_dir, &["nodeA"], &["--config", resume_config.to_str().unwrap(), "--resume", "latest"]);
    let resumed = run_with_timeout(resume.env("SHARD_TRAIN_TEST_INTERRUPT_AFTER", "3"), Duration::from_secs(120));
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let header = stdout(&resumed);
    assert!(header.contains("resumed after step 2") && header.contains("nodes: nodeA (ranks 0-2)"), "{header}");
    // A constant learning rate and the data in order: step 3 of this run is the reference's.
    let step_3 = read_metrics(&out_dir.join("metrics.jsonl")).pop().unwrap();
    let reference = &reference_json(&window())["full"];
    assert_eq!(step_3["step"].as_u64(), Some(3), "{step_3}");
    assert!((step_3["loss"].as_f64().unwrap() - reference["losses"][2].as_f64().unwrap()).abs() < 1e-5, "{step_3}");
    assert!((step_3["grad_norm"].as_f64().unwrap() - reference["grad_norms_before_clip"][2].as_f64().unwrap()).abs() < 1e-4, "{step_3}");
}

fn read_metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// nodeB sees an empty directory of its own over output.dir's parent (a node-local path where
/// the others have a shared one): the shared-dir check refuses the job at start-up, naming
/// nodeB's ranks, before the data is prepared.
#[test]
fn a_node_that_does_not_see_output_dir_is_refused_at_start_up() {
    if !can_make_nodes() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let out_dir = shared.join("run");
    let config = write_config(tmp.path(), &node_sharded(6, None), &out_dir, "export = \"none\"\n");
    let mut cmd = hostfile_launch(tmp.path(), &TWO_NODES, &["--config", config.to_str().unwrap()]);
    cmd.env("CLUSTER_PRIVATE_DIR", format!("nodeB:{}", shared.display()));
    let run = launch(&mut cmd, out_dir.clone(), tmp);
    assert!(!run.output.status.success());
    let expected =
        format!("output.dir = {} is not shared by the ranks: rank(s) 3-5 of 6 do not see the file rank 0 wrote there", out_dir.display());
    assert!(run.stderr().contains(&expected), "{}", run.stderr());
    assert!(!out_dir.join("data").exists() && !out_dir.join("metrics.jsonl").exists(), "stopped before the data was prepared");
}

/// A SLURM allocation of nodeA and nodeB, 3 tasks each (SLURM's variables, set by hand): the
/// script's --dry-run announces that layout, and run through mpirun (which reads the allocation
/// from those variables) it lays the ranks out as the hostfile does.
#[test]
fn slurm_script_lays_out_a_two_node_allocation_as_the_hostfile_does() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("run");
    let config = write_config(tmp.path(), &node_sharded(6, Some(1)), &out_dir, "export = \"none\"\n");
    let config = config.to_str().unwrap();
    let slurm = |launcher: &str, args: &[&str]| {
        let mut cmd = Command::new("bash");
        cmd.current_dir(repo()).arg("launch/slurm.sbatch").args(args);
        on_the_nodes(&mut cmd, tmp.path()).env("SHARD_TRAIN_LAUNCHER", launcher).envs([
            ("SLURM_JOB_ID", "28"),
            ("SLURM_JOBID", "28"), // the name OpenMPI reads
            ("SLURM_SUBMIT_DIR", repo().to_str().unwrap()),
            ("SLURM_JOB_NUM_NODES", "2"),
            ("SLURM_NNODES", "2"),
            ("SLURM_JOB_NODELIST", "nodeA,nodeB"),
            ("SLURM_NODELIST", "nodeA,nodeB"),
            ("SLURM_NTASKS_PER_NODE", "3"),
            ("SLURM_TASKS_PER_NODE", "3(x2)"),
            ("SLURM_JOB_CPUS_PER_NODE", "3(x2)"),
            // mpirun starts its daemons with srun inside an allocation; here there is no srun.
            ("OMPI_MCA_plm", "rsh"),
        ]);
        cmd
    };
    let binary = env!("CARGO_BIN_EXE_shard-train");
    for launcher in ["srun", "mpirun"] {
        let dry_run = slurm(launcher, &["--dry-run", config]).output().unwrap();
        let stderr = String::from_utf8_lossy(&dry_run.stderr);
        assert!(dry_run.status.success() && stderr.contains("# shard-train on 2 node(s) x 3 rank(s), job 28"), "{stderr}");
        assert!(stdout(&dry_run).trim_end().ends_with(&format!("{binary} --config {config}")), "{}", stdout(&dry_run));
    }

    if !can_make_nodes() {
        return;
    }
    let run = launch(&mut slurm("mpirun", &[config]), out_dir, tmp);
    run.assert_success();
    let header = stdout(&run.output);
    assert_eq!(layout_lines(&header), TWO_NODE_LAYOUT, "{header}");
}
