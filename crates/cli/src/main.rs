//! `shard-train`: fine-tune Mistral-architecture models with ZeRO-3 sharding across ranks.

mod backend;
mod export_cmd;
mod inspect;
mod plan;
mod plot;
mod preview;
mod quantize_cmd;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Training allocates and frees the same large buffers every layer; glibc maps and unmaps each
// one, so every reuse page-faults again. mimalloc keeps them for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "shard-train",
    version,
    about = "Fine-tune Mistral-class models with ZeRO-3 sharding across ranks",
    args_conflicts_with_subcommands = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)] // without a command: `shard-train --config FILE` is `shard-train train --config FILE`
    train: Option<train::TrainArgs>,
}

#[derive(Subcommand)]
enum Command {
    /// Train as the run config says (one worker per rank under mpirun).
    Train(train::TrainArgs),
    /// Turn a save into a Hugging Face checkpoint or peft adapters (one process, no mpirun).
    Export(export_cmd::ExportArgs),
    /// Quantize a model to NF4 as transformers + bitsandbytes save it (a QLoRA base).
    Quantize(quantize_cmd::QuantizeArgs),
    /// Summarise a model's architecture and parameters without loading its weights.
    Inspect(inspect::InspectArgs),
    /// Memory per rank, time and cost of a run before it starts; compare strategies, or find the
    /// fewest GPUs that fit.
    Plan(Box<plan::PlanArgs>),
    /// Several runs' loss curves (train, eval, learning rate) on one SVG chart.
    Plot(plot::PlotArgs),
    /// The dataset of a run config.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Show the first rows as the model will see them, the tokens without loss marked.
    Preview(preview::PreviewArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.or(cli.train.map(Command::Train)).expect("clap shows the help without arguments") {
        Command::Train(args) => train::run(args),
        Command::Export(args) => export_cmd::run(args),
        Command::Quantize(args) => quantize_cmd::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Plan(args) => plan::run(*args),
        Command::Plot(args) => plot::run(args),
        Command::Data { command: DataCommand::Preview(args) } => preview::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): what it wanted is written, and that is all.
        Err(e)
            if e.chain()
                .any(|cause| cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", shard_train_core::job::error_text::user_message(&e));
            ExitCode::FAILURE
        }
    }
}
