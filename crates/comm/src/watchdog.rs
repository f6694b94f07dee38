//! A deadline on every collective call: `Watched` wraps any `Collective`, and a thread of its own
//! ends the job when one call has waited longer than the deadline. MPI notices a rank that dies,
//! not one that stalls (SIGSTOP, a deadlock, a hung file system): without this, the other ranks
//! wait in their collective forever.
//!
//! To say whom a stalled call waits for, every rank publishes its progress (how many collective
//! calls it has entered, in which phase of the run) to a small file in a directory all ranks see;
//! ranks make the same calls in the same order, so a rank that has entered fewer calls than the
//! waiting one is one it waits for. Without such a directory the report says only what waited.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::{BasicOps, Int, Tensor, TensorKind, backend::Backend};

use crate::{Collective, Pending, ReduceOp, Traffic, World};

/// How often the watchdog looks at the clock and publishes progress that changed.
const TICK: Duration = Duration::from_millis(250);

/// How often a rank rewrites its progress even when unchanged: a file older than
/// [`SILENT_AFTER`] is that of a rank whose process no longer runs (stopped, or hung as a
/// whole), which tells it apart from one that waits in the same call.
const HEARTBEAT: Duration = Duration::from_secs(2);
const SILENT_AFTER: Duration = Duration::from_secs(6);

/// What the watchdog needs besides the collective.
pub struct WatchdogSettings {
    /// The longest a collective call may wait once the run is training.
    pub timeout: Duration,
    /// The longest during start-up (config, plan, data, weights), when one rank may tokenize
    /// the dataset or read weights while the others wait.
    pub startup_timeout: Duration,
    /// Where the ranks publish their progress (`rank-RRRRR`); all ranks must see it.
    pub progress_dir: Option<PathBuf>,
    /// Ends the whole job (MPI_Abort for MPI); called on the watchdog's thread.
    pub abort: fn(i32) -> !,
    /// The exit code the job ends with.
    pub exit_code: i32,
}

/// Where a rank is.
#[derive(Debug, Clone)]
struct Progress {
    /// Collective calls entered so far.
    calls: u64,
    /// The call in progress and since when.
    waiting: Option<(&'static str, Instant)>,
    /// What the run is doing (`start-up`, `step 12`, `save of step 10`), set by the trainer.
    phase: String,
    training: bool,
}

/// A collective whose every call has a deadline.
pub struct Watched<C> {
    inner: C,
    progress: Arc<Mutex<Progress>>,
}

/// Lets the run say what it is doing, for the watchdog's report; cheap to clone.
#[derive(Clone)]
pub struct Phase(Arc<Mutex<Progress>>);

impl Phase {
    /// `phase` names what the run does now (`step 12`); `training` switches from the start-up
    /// deadline to the training one.
    pub fn set(&self, phase: impl Into<String>, training: bool) {
        let mut progress = self.0.lock().expect("progress lock");
        progress.phase = phase.into();
        progress.training = training;
    }
}

impl<C> Watched<C> {
    /// Wraps `inner`, starting the watchdog's thread (it lives as long as the process).
    pub fn new(inner: C, world: World, settings: WatchdogSettings) -> Self {
        let progress = Arc::new(Mutex::new(Progress { calls: 0, waiting: None, phase: "start-up".into(), training: false }));
        let watched = Arc::clone(&progress);
        if let Some(dir) = &settings.progress_dir {
            // A rank that cannot publish is reported as unknown by the others; not worth failing for.
            let _ = std::fs::create_dir_all(dir);
        }
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watch(&watched, world, &settings))
            .expect("a thread for the watchdog");
        Self { inner, progress }
    }

    /// The same watchdog (deadline, progress) over a collective made from this one, as NCCL's
    /// from MPI's ranks; making it is a call under the deadline too (every rank joins it).
    pub fn try_map<D, E>(self, make: impl FnOnce(C) -> Result<D, E>) -> Result<Watched<D>, E> {
        let inner = timed(&self.progress, "set-up of the collective", || make(self.inner))?;
        Ok(Watched { inner, progress: self.progress })
    }

    pub fn phase(&self) -> Phase {
        Phase(Arc::clone(&self.progress))
    }

    fn call<T>(&self, op: &'static str, run: impl FnOnce(&C) -> T) -> T {
        timed(&self.progress, op, || run(&self.inner))
    }

    /// A collective started ahead (a prefetched gather, a reduce-scatter overlapping compute):
    /// the start and the wait are each a call under the deadline (the wait is where a rank that
    /// stalled is waited for). `ops` names both.
    fn watched_start<B: Backend, K: TensorKind<B> + BasicOps<B> + 'static>(
        &self,
        ops: [&'static str; 2],
        start: impl FnOnce(&C) -> Pending<B, K>,
    ) -> Pending<B, K> {
        let pending = self.call(ops[0], start);
        let progress = Arc::clone(&self.progress);
        Pending::new(move || timed(&progress, ops[1], || pending.wait()))
    }
}

const ALL_GATHER: [&str; 2] = ["all_gather (start)", "all_gather (wait)"];
const REDUCE_SCATTER: [&str; 2] = ["reduce_scatter (start)", "reduce_scatter (wait)"];

/// Runs `wait` as collective call `op`, under the deadline.
fn timed<T>(progress: &Mutex<Progress>, op: &'static str, wait: impl FnOnce() -> T) -> T {
    {
        let mut progress = progress.lock().expect("progress lock");
        progress.calls += 1;
        progress.waiting = Some((op, Instant::now()));
    }
    let out = wait();
    progress.lock().expect("progress lock").waiting = None;
    out
}

/// The watchdog's loop: publish progress, and end the job when a call is past its deadline.
fn watch(progress: &Mutex<Progress>, world: World, settings: &WatchdogSettings) {
    let own_file = settings.progress_dir.as_ref().map(|d| progress_file(d, world.rank));
    let mut published: Option<(String, Instant)> = None;
    loop {
        let now = progress.lock().expect("progress lock").clone();
        if let Some(file) = &own_file {
            let line = format!("{}\t{}\t{}\n", now.calls, now.waiting.map_or("-", |(op, _)| op), now.phase);
            if published.as_ref().is_none_or(|(last, at)| *last != line || at.elapsed() >= HEARTBEAT) {
                // Written aside and renamed, so that a rank stopped half-way through a write
                // leaves its last whole line for the others to read.
                let tmp = file.with_extension("tmp");
                let _ = std::fs::write(&tmp, &line).and_then(|()| std::fs::rename(&tmp, file));
                published = Some((line, Instant::now()));
            }
        }
        let deadline = if now.training { settings.timeout } else { settings.startup_timeout };
        if let Some((op, since)) = now.waiting.filter(|(_, since)| since.elapsed() > deadline) {
            eprintln!("{}", report(&now, op, since.elapsed(), deadline, world, settings.progress_dir.as_deref()));
            (settings.abort)(settings.exit_code);
        }
        std::thread::sleep(TICK);
    }
}

fn progress_file(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("rank-{rank:05}"))
}

/// What a rank published.
struct Published {
    /// Collective calls entered.
    calls: u64,
    /// The call it is in (`-` for none).
    op: String,
    phase: String,
    /// Since the rank last wrote it.
    age: Duration,
}

fn read_progress(dir: &Path, rank: usize) -> Option<Published> {
    let path = progress_file(dir, rank);
    let text = std::fs::read_to_string(&path).ok()?;
    let age = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?.elapsed().unwrap_or_default();
    let mut fields = text.trim_end_matches('\n').splitn(3, '\t');
    Some(Published { calls: fields.next()?.parse().ok()?, op: fields.next()?.to_owned(), phase: fields.next()?.to_owned(), age })
}

/// "rank 0: all_reduce (collective call 57, step 3) has waited 20 s (runtime.timeout_s = 20) for
/// rank 1 (last seen at call 55, barrier, step 3); ending the job".
fn report(now: &Progress, op: &'static str, waited: Duration, deadline: Duration, world: World, dir: Option<&Path>) -> String {
    let key = if now.training { "runtime.timeout_s" } else { "the start-up deadline, runtime.startup_timeout_s" };
    let mut msg = format!(
        "[rank {}/{}] watchdog: {op} (collective call {}, {}) has waited {:.0} s ({key} = {}) ",
        world.rank,
        world.size,
        now.calls,
        now.phase,
        waited.as_secs_f64(),
        deadline.as_secs()
    );
    let lagging: Vec<String> = match dir {
        None => Vec::new(),
        Some(dir) => (0..world.size)
            .filter(|&r| r != world.rank)
            .filter_map(|r| match read_progress(dir, r) {
                Some(p) if p.age > SILENT_AFTER => Some(format!(
                    "rank {r} (silent for {:.0} s, last seen at call {}, {}, {})",
                    p.age.as_secs_f64(),
                    p.calls,
                    p.op,
                    p.phase
                )),
                Some(p) if p.calls >= now.calls => None,
                Some(p) => Some(format!("rank {r} (last seen at call {}, {}, {})", p.calls, p.op, p.phase)),
                None => Some(format!("rank {r} (no progress published)")),
            })
            .collect(),
    };
    if lagging.is_empty() {
        msg.push_str("for a rank that did not reach it");
    } else {
        msg.push_str(&format!("for {}", lagging.join(", ")));
    }
    msg.push_str("; ending the job");
    msg
}

impl<B: Backend, C: Collective<B>> Collective<B> for Watched<C> {
    fn world(&self) -> &World {
        self.inner.world()
    }

    fn all_gather(&self, shard: Tensor<B, 1>) -> Tensor<B, 1> {
        self.call("all_gather", |c| c.all_gather(shard))
    }

    fn start_all_gather(&self, shard: Tensor<B, 1>) -> Pending<B> {
        self.watched_start(ALL_GATHER, |c| c.start_all_gather(shard))
    }

    fn start_all_gather_bytes(&self, shard: Tensor<B, 1, Int>) -> Pending<B, Int> {
        self.watched_start(ALL_GATHER, |c| c.start_all_gather_bytes(shard))
    }

    fn reduce_scatter(&self, full: Tensor<B, 1>) -> Tensor<B, 1> {
        self.call("reduce_scatter", |c| c.reduce_scatter(full))
    }

    fn start_reduce_scatter(&self, full: Tensor<B, 1>) -> Pending<B> {
        self.watched_start(REDUCE_SCATTER, |c| c.start_reduce_scatter(full))
    }

    fn all_reduce(&self, tensor: Tensor<B, 1>) -> Tensor<B, 1> {
        self.call("all_reduce", |c| c.all_reduce(tensor))
    }

    fn broadcast(&self, tensor: Tensor<B, 1>, root: usize) -> Tensor<B, 1> {
        self.call("broadcast", |c| c.broadcast(tensor, root))
    }

    fn all_reduce_scalars(&self, values: &mut [f64], op: ReduceOp) {
        self.call("all_reduce", |c| c.all_reduce_scalars(values, op))
    }

    fn barrier(&self) {
        self.call("barrier", |c| c.barrier())
    }

    fn traffic(&self) -> Traffic {
        self.inner.traffic()
    }

    fn transport(&self) -> &'static str {
        self.inner.transport()
    }

    /// The group's calls are watched by this rank's watchdog too, counted with the others: every
    /// rank makes the same calls on its groups, in the same order, as on the world.
    fn split(&self, color: usize) -> Self {
        let inner = self.call("split", |c| c.split(color));
        Self { inner, progress: Arc::clone(&self.progress) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_ranks_behind() {
        let tmp = std::env::temp_dir().join(format!("watchdog-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(progress_file(&tmp, 1), "57\tall_reduce\tstep 3\n").unwrap();
        std::fs::write(progress_file(&tmp, 2), "55\tbarrier\tstep 3\n").unwrap();
        // Rank 4 reached the call, then stopped (SIGSTOP): its file is no longer rewritten.
        std::fs::write(progress_file(&tmp, 4), "57\tall_reduce\tstep 3\n").unwrap();
        let stopped_at = std::time::SystemTime::now() - Duration::from_secs(30);
        std::fs::File::options().write(true).open(progress_file(&tmp, 4)).unwrap().set_modified(stopped_at).unwrap();
        let world = World { rank: 0, size: 5, local_rank: 0, local_size: 5, nodes: 1 };
        let now = Progress { calls: 57, waiting: None, phase: "step 3".into(), training: true };
        let msg = report(&now, "all_reduce", Duration::from_secs(21), Duration::from_secs(20), world, Some(&tmp));
        assert!(msg.contains("rank 2 (last seen at call 55, barrier, step 3)"), "{msg}");
        assert!(msg.contains("rank 3 (no progress published)") && !msg.contains("rank 1"), "{msg}");
        assert!(msg.contains("rank 4 (silent for 30 s, last seen at call 57, all_reduce, step 3)"), "{msg}");
        assert!(msg.contains("runtime.timeout_s = 20"), "{msg}");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
