//! `shard-train export --checkpoint DIR --out DIR`: a save turned into a Hugging Face checkpoint
//! or peft adapters, offline, in one process (no mpirun).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use shard_checkpoint::DiskDtype;
use shard_train_core::saves::export_save::{SaveExport, export_save};
use shard_train_core::system::threads::peak_rss_bytes;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A checkpoint (`.../checkpoints/step-NNNNNNN`), or a run's output.dir or checkpoints
    /// directory (its latest complete checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The directory to write: a new one, or an earlier export (replaced whole, atomically).
    #[arg(long)]
    out: PathBuf,
    /// Write into an --out that holds other files too (or is a place no export replaces: the
    /// working directory, a run), replacing only files of the names an export writes; the
    /// directory and its other files stay.
    #[arg(long)]
    overwrite: bool,
    /// hf: the model (with LoRA, merged); merged: the same, said explicitly; peft: LoRA adapters.
    #[arg(long, value_enum, default_value_t = Format::Hf)]
    format: Format,
    /// dtype of the HF export; default: the model's (`torch_dtype`), else float32.
    #[arg(long, value_enum)]
    dtype: Option<Dtype>,
    /// Largest safetensors file of an HF export, e.g. 5GB, 500MB, 2GiB.
    #[arg(long, value_parser = shard_plan::parse_size, default_value = "5GB")]
    max_shard_size: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Hf,
    Merged,
    Peft,
}

/// A float dtype on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum Dtype {
    F32,
    Bf16,
    F16,
}

impl Dtype {
    pub(crate) fn disk(self) -> DiskDtype {
        match self {
            Dtype::F32 => DiskDtype::F32,
            Dtype::Bf16 => DiskDtype::BF16,
            Dtype::F16 => DiskDtype::F16,
        }
    }
}

pub fn run(args: ExportArgs) -> Result<()> {
    let what = match args.format {
        Format::Peft => SaveExport::Peft,
        Format::Hf | Format::Merged => {
            let dtype = args.dtype.map(Dtype::disk);
            SaveExport::Hf { dtype, max_shard_bytes: args.max_shard_size as usize }
        }
    };
    let dir = export_save(&args.checkpoint, &args.out, what, args.overwrite)?;
    writeln!(std::io::stdout(), "exported {} (peak RSS {:.0} MiB)", dir.display(), peak_rss_bytes() as f64 / (1 << 20) as f64)?;
    Ok(())
}
