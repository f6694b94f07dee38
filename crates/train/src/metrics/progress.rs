//! Progress while training, on rank 0: on a terminal an indicatif bar (step, loss, tokens/s,
//! elapsed, ETA); otherwise, as in a log file, one line per step with the elapsed time and ETA.
//! Under mpirun a rank's stderr is a pipe to mpirun, whose own output may be the terminal: the
//! launch scripts say so in [`LAUNCHER_ON_TERMINAL`], and `train --progress bar` asks for the bar.

use std::io::IsTerminal;
use std::str::FromStr;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Set to 1 by launch/*.sh when their stderr, which mpirun's and so the ranks' output reach, is a
/// terminal.
pub const LAUNCHER_ON_TERMINAL: &str = "SHARD_TRAIN_TERMINAL";

/// How the steps are shown (`train --progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A bar when stderr, or the launcher's, is a terminal; lines otherwise.
    #[default]
    Auto,
    Bar,
    Lines,
}

impl FromStr for ProgressMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "bar" => Ok(Self::Bar),
            "lines" => Ok(Self::Lines),
            _ => Err(format!("{s:?}: expected auto, bar or lines")),
        }
    }
}

impl ProgressMode {
    /// Whether a bar is drawn, given whether this process's stderr is a terminal and whether the
    /// launcher said that its own is.
    pub fn draws_bar(self, stderr_is_terminal: bool, launcher_on_terminal: bool) -> bool {
        match self {
            Self::Bar => true,
            Self::Lines => false,
            Self::Auto => stderr_is_terminal || launcher_on_terminal,
        }
    }
}

pub enum Progress {
    Bar(ProgressBar),
    Lines { started: Instant, first_step: u64, total_steps: u64 },
}

impl Progress {
    /// For a run of `total_steps` that starts after step `first_step`.
    pub fn new(total_steps: u64, first_step: u64, mode: ProgressMode) -> Self {
        let on_terminal = std::io::stderr().is_terminal();
        let launcher_on_terminal = std::env::var_os(LAUNCHER_ON_TERMINAL).is_some_and(|v| v == "1");
        if mode.draws_bar(on_terminal, launcher_on_terminal) {
            // indicatif hides its bar on a stderr that is not a terminal: drawn there all the same.
            let target = match on_terminal {
                true => ProgressDrawTarget::stderr(),
                false => ProgressDrawTarget::term_like(Box::new(console::Term::stderr())),
            };
            let bar = ProgressBar::with_draw_target(Some(total_steps), target);
            bar.set_position(first_step);
            bar.set_style(ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} [{elapsed} < {eta}]").expect("valid template"));
            Progress::Bar(bar)
        } else {
            Progress::Lines { started: Instant::now(), first_step, total_steps }
        }
    }

    /// Step `step` (counting from 1) is done; `summary` says how it went.
    pub fn step(&self, step: u64, summary: String) {
        match self {
            Progress::Bar(bar) => {
                bar.set_message(summary);
                bar.inc(1);
            }
            Progress::Lines { started, first_step, total_steps } => {
                let elapsed = started.elapsed();
                // The steps of this process so far set the pace of the rest.
                let remaining = elapsed.mul_f64((total_steps - step) as f64 / (step - first_step).max(1) as f64);
                println!("step {step}/{total_steps}  {summary}  elapsed {}  eta {}", clock(elapsed), clock(remaining));
            }
        }
    }

    /// A line that stays (above the bar on a terminal).
    pub fn note(&self, line: &str) {
        match self {
            Progress::Bar(bar) => bar.println(line),
            Progress::Lines { .. } => println!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish();
        }
    }
}

/// `1:02:03`, `2:03` or `0:07`.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match s / 3600 {
        0 => format!("{}:{:02}", s / 60, s % 60),
        h => format!("{h}:{:02}:{:02}", s / 60 % 60, s % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_on_a_terminal_or_under_a_launcher_on_one_or_when_asked() {
        use ProgressMode::*;
        for (mode, stderr_is_terminal, launcher_on_terminal, bar) in [
            (Auto, true, false, true),
            (Auto, false, true, true),
            (Auto, false, false, false),
            (Bar, false, false, true),
            (Lines, true, true, false),
        ] {
            assert_eq!(
                mode.draws_bar(stderr_is_terminal, launcher_on_terminal),
                bar,
                "{mode:?} {stderr_is_terminal} {launcher_on_terminal}"
            );
        }
        assert_eq!("bar".parse::<ProgressMode>(), Ok(Bar));
        assert_eq!("bars".parse::<ProgressMode>(), Err("\"bars\": expected auto, bar or lines".into()));
    }

    #[test]
    fn clock_reads_as_hours_minutes_seconds() {
        assert_eq!(clock(Duration::from_secs(7)), "0:07");
        assert_eq!(clock(Duration::from_secs(123)), "2:03");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
    }
}
