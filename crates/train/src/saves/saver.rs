//! When the run saves: every `output.save_every` steps, after the last step (`output.save_at_end`)
//! and when it stops on request, so that `--resume latest` continues where it stopped.

use crate::config::run_config::OutputSection;

pub struct Saver {
    /// `output.save_every` (0: never on a schedule).
    every: u64,
    at_end: bool,
}

impl Saver {
    pub fn new(output: &OutputSection) -> Self {
        Self { every: output.save_every, at_end: output.save_at_end }
    }

    /// Whether a save is due once `step` steps are done; `last`: it was the run's last step,
    /// `stop`: the ranks agreed to stop on request.
    pub fn due(&self, step: u64, last: bool, stop: bool) -> bool {
        stop || (last && self.at_end) || (self.every > 0 && step.is_multiple_of(self.every))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saver(every: u64, at_end: bool) -> Saver {
        Saver::new(&OutputSection { save_every: every, save_at_end: at_end, ..Default::default() })
    }

    /// The steps of a 10-step run after which a save is due, without a stop.
    fn due_steps(saver: &Saver) -> Vec<u64> {
        (1..=10).filter(|&step| saver.due(step, step == 10, false)).collect()
    }

    #[test]
    fn due_every_n_steps_and_after_the_last() {
        assert_eq!(due_steps(&saver(4, true)), [4, 8, 10]);
        assert_eq!(due_steps(&saver(0, true)), [10]);
    }

    #[test]
    fn without_save_at_end_only_the_schedule_saves() {
        assert_eq!(due_steps(&saver(4, false)), [4, 8]);
        assert_eq!(due_steps(&saver(0, false)), Vec::<u64>::new());
    }

    #[test]
    fn a_stop_on_request_always_saves() {
        assert!(saver(0, false).due(3, false, true));
        assert!(saver(4, false).due(5, false, true));
    }
}
