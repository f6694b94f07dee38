//! The run's record: `<output.dir>/run.toml`, the run config as it was resolved (absolute paths,
//! defaults filled in), with the version and the command line that started the run as comments,
//! so that the file is itself a run config that trains the same run again.

use anyhow::{Context, Result};

use crate::config::run_config::RunConfig;

/// Writes `<output.dir>/run.toml` for a run of `total_steps` steps.
pub fn write_run_record(run: &RunConfig, total_steps: u64) -> Result<()> {
    let dir = &run.output.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create output.dir {}", dir.display()))?;
    let command: Vec<String> = std::env::args().map(|arg| shell_word(&arg)).collect();
    let text = format!(
        "# shard-train {}: the run config as this run resolved it\n# command: {}\n# steps: {total_steps}\n\n{}",
        env!("CARGO_PKG_VERSION"),
        command.join(" "),
        toml::to_string(run).context("cannot write the run config as TOML")?
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `arg` as a shell would need it typed.
fn shell_word(arg: &str) -> String {
    let plain = !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain { arg.to_owned() } else { format!("'{}'", arg.replace('\'', r"'\''")) }
}
