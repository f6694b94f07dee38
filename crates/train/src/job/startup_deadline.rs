//! The start-up deadline before the watchdog exists: MPI_Init and the first agreements of the
//! ranks (the run config, output.dir's claim). MPI_Init waits for every rank of the job (OpenMPI
//! exchanges the ranks' addresses in it), so a rank stopped (SIGSTOP) or stuck before or inside
//! it would keep the others there for ever, and the watchdog, which needs the run config and a
//! working MPI, starts only after.
//!
//! So a timer thread starts before MPI_Init, with `runtime.startup_timeout_s` read from the run
//! config on its own (a config that fails to load is reported after MPI_Init, by every rank at
//! once; the timer then takes the default). It is this process's own clock: it needs nothing from
//! MPI or the other ranks, works under any launcher (mpirun, srun, a plain start), and a rank
//! still running ends the job however the stopped one got stuck. A timer in the launch scripts
//! would miss `mpirun ... shard-train` typed by hand and could not tell start-up from training.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use shard_comm::MpiCollective;

use crate::config::run_config::RuntimeSection;

/// How often the timer looks at the clock.
const TICK: Duration = Duration::from_millis(250);

/// The exit code of a job ended by a deadline (the watchdog's, as coreutils' `timeout`).
pub const DEADLINE_EXIT_CODE: i32 = 124;

/// Where the rank is, as the timer sees it.
const IN_MPI_INIT: u8 = 0;
const MPI_READY: u8 = 1;
const HANDED_OVER: u8 = 2;

/// The timer; dropping it without [`StartupDeadline::hand_over`] leaves it running, which is what
/// a rank that fails before the watchdog wants (its MPI_Finalize may wait for a stopped rank too).
pub struct StartupDeadline {
    stage: Arc<AtomicU8>,
}

impl StartupDeadline {
    /// Starts the timer for a run of `config`; call it before MPI_Init.
    pub fn start(config: &Path) -> Self {
        let limit = Duration::from_secs(startup_timeout_s(config));
        let stage = Arc::new(AtomicU8::new(IN_MPI_INIT));
        let watched = Arc::clone(&stage);
        let started = Instant::now();
        std::thread::Builder::new()
            .name("startup-deadline".into())
            .spawn(move || {
                while watched.load(Ordering::Acquire) != HANDED_OVER {
                    if started.elapsed() > limit {
                        end_job(watched.load(Ordering::Acquire), limit);
                    }
                    std::thread::sleep(TICK);
                }
            })
            .expect("a thread for the start-up deadline");
        Self { stage }
    }

    /// MPI_Init returned: from now on the timer ends the job with MPI_Abort.
    pub fn mpi_ready(&self) {
        self.stage.store(MPI_READY, Ordering::Release);
    }

    /// The watchdog takes over (its own start-up deadline covers the rest of start-up).
    pub fn hand_over(self) {
        self.stage.store(HANDED_OVER, Ordering::Release);
    }
}

/// `runtime.startup_timeout_s` of the run config at `path`, or its default when the file or the
/// value cannot be read (the run's own loading reports why, on every rank).
fn startup_timeout_s(path: &Path) -> u64 {
    let configured = std::fs::read_to_string(path).ok().and_then(|text| text.parse::<toml::Table>().ok()).and_then(|table| {
        let seconds = table.get("runtime")?.get("startup_timeout_s")?.as_integer()?;
        u64::try_from(seconds).ok().filter(|&s| s > 0)
    });
    configured.unwrap_or_else(|| RuntimeSection::default().startup_timeout_s)
}

/// Ends the whole job: with MPI_Abort once MPI is up; before, by exiting (mpirun and srun
/// `--kill-on-bad-exit` end a job one of whose ranks exited with an error; MPI_Abort is not
/// allowed before MPI_Init returns).
fn end_job(stage: u8, limit: Duration) -> ! {
    // Before MPI_Init returns only the launcher knows the rank.
    let rank = ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"].iter().find_map(|name| std::env::var(name).ok());
    let rank = rank.map_or_else(String::new, |r| format!("[rank {r}] "));
    let waiting = match stage {
        IN_MPI_INIT => "MPI_Init has not returned: a rank of the job is stopped, stuck or cannot reach the others",
        _ => "the ranks have not agreed on the run config and output.dir: a rank of the job is stopped or stuck",
    };
    eprintln!(
        "{rank}start-up deadline: after {} s (runtime.startup_timeout_s = {}) {waiting}; ending the job",
        limit.as_secs(),
        limit.as_secs()
    );
    if stage == IN_MPI_INIT {
        // SAFETY: _exit ends the process at once; no destructor or atexit handler of MPI runs
        // (one could wait on the other ranks).
        unsafe { libc::_exit(DEADLINE_EXIT_CODE) }
    }
    MpiCollective::abort_job(DEADLINE_EXIT_CODE)
}

#[cfg(test)]
mod tests {
    use super::startup_timeout_s;

    #[test]
    fn the_deadline_is_read_from_the_config_or_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        std::fs::write(&path, "[model]\npath = \"m\"\n[runtime]\nstartup_timeout_s = 9\n").unwrap();
        assert_eq!(startup_timeout_s(&path), 9);
        std::fs::write(&path, "[runtime]\nstartup_timeout_s = -1\n").unwrap();
        assert_eq!(startup_timeout_s(&path), 7200, "an invalid value: the default (the config's loading refuses it)");
        std::fs::write(&path, "not toml [").unwrap();
        assert_eq!(startup_timeout_s(&path), 7200);
        assert_eq!(startup_timeout_s(&dir.path().join("missing.toml")), 7200);
    }
}
