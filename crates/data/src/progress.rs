//! Progress of the cache build on stderr: a bar on a terminal, a plain line per tenth otherwise
//! (logs of batch jobs).

use std::io::IsTerminal;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    tenths_shown: u64,
}

impl Progress {
    pub fn new(label: String, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("a valid template")
                .progress_chars("=> ");
            ProgressBar::new(total).with_style(style).with_message(label.clone())
        });
        Self { bar, label, total, tenths_shown: 0 }
    }

    /// `done` of the `total` bytes are processed.
    pub fn set(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let tenths = done * 10 / self.total.max(1);
        if tenths > self.tenths_shown {
            self.tenths_shown = tenths;
            eprintln!("{}: {}0% of {}", self.label, tenths, HumanBytes(self.total));
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
