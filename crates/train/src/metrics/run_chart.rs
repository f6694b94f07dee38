//! The run's loss chart, redrawn by rank 0 after each save from metrics.jsonl, so that a run that
//! stops or fails leaves a chart of what its last save holds.

use std::path::PathBuf;

use shard_comm::World;

use crate::metrics::chart;

pub struct RunChart {
    /// The output directory, on rank 0 only.
    dir: Option<PathBuf>,
}

impl RunChart {
    pub fn new(dir: PathBuf, world: &World) -> Self {
        Self { dir: world.is_main().then_some(dir) }
    }

    /// Whether a redraw is due after a step; `saved`: the step ended with a save.
    pub fn due(&self, saved: bool) -> bool {
        saved && self.dir.is_some()
    }

    /// Redraws the chart when due. A chart that cannot be drawn is a warning: the save is made,
    /// and the run trains on.
    pub fn after_step(&self, saved: bool) {
        if let Some(dir) = self.dir.as_ref().filter(|_| self.due(saved))
            && let Err(e) = chart::draw_run(dir)
        {
            eprintln!("warning: the loss chart was not redrawn: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_on_rank_0_after_a_save_only() {
        let chart = |rank| RunChart::new(PathBuf::from("out"), &World { rank, size: 2, local_rank: rank, local_size: 2, nodes: 1 });
        assert!(chart(0).due(true));
        assert!(!chart(0).due(false), "no save, the chart already shows what is saved");
        assert!(!chart(1).due(true), "rank 0 draws it");
    }
}
