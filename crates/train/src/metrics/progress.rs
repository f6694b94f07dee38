//! Progress while training, on rank 0: on a terminal an indicatif bar (step, loss, tokens/s,
//! elapsed, ETA); otherwise, as in a log file, one line per step with the elapsed time and ETA.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub enum Progress {
    Bar(ProgressBar),
    Lines { started: Instant, first_step: u64, total_steps: u64 },
}

impl Progress {
    /// For a run of `total_steps` that starts after step `first_step`.
    pub fn new(total_steps: u64, first_step: u64) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total_steps);
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
    fn clock_reads_as_hours_minutes_seconds() {
        assert_eq!(clock(Duration::from_secs(7)), "0:07");
        assert_eq!(clock(Duration::from_secs(123)), "2:03");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
    }
}
