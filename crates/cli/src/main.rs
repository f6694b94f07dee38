//! `shard-train`: fine-tune Mistral-architecture models with ZeRO-3 sharding across ranks.

mod backend;
mod export;
mod fault_injection;
mod inspect;
mod metrics;
mod plan;
mod run_config;
mod threads;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Training allocates and frees the same large buffers every layer; glibc maps and unmaps each
// one, so every reuse page-faults again. mimalloc keeps them for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "shard-train", version, about = "Fine-tune Mistral-class models with ZeRO-3 sharding across ranks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train as the run config says (one worker per rank under mpirun).
    Train(train::TrainArgs),
    /// Summarise a model's architecture and parameters without loading its weights.
    Inspect(inspect::InspectArgs),
    /// Memory per rank, time and cost of a run before it starts; compare strategies, or find the
    /// fewest GPUs that fit.
    Plan(plan::PlanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Plan(args) => plan::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
