//! `shard-train quantize --model DIR --out DIR`: every decoder linear of a Hugging Face checkpoint
//! to NF4 with double quantization, written as transformers + bitsandbytes save a 4-bit model
//! (`AutoModelForCausalLM.from_pretrained(out)` loads it), one tensor in memory at a time.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use shard_train_core::saves::quantize::quantize;
use shard_train_core::system::threads::peak_rss_bytes;

use crate::export_cmd::Dtype;

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// The Hugging Face checkpoint directory to quantize.
    #[arg(long)]
    model: PathBuf,
    /// The directory to write: a new one, or an earlier export or quantized copy (replaced whole).
    #[arg(long)]
    out: PathBuf,
    /// Write into an --out that holds other files too, replacing only files of the names a
    /// quantized checkpoint has (the directory and its other files stay).
    #[arg(long)]
    overwrite: bool,
    /// The dtype the model is loaded in before quantizing (transformers' `dtype`): the quant
    /// states and the unquantized tensors keep it. Default: config.json's, else as stored.
    #[arg(long, value_enum)]
    dtype: Option<Dtype>,
    /// The `torch.get_num_threads()` of the bitsandbytes run to match bit for bit: torch sums
    /// the absmaxes of weights over 2M elements on several threads, which moves their mean (the
    /// stored offset) in its last bit.
    #[arg(long, default_value_t = 1)]
    torch_threads: usize,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let summary = quantize(&args.model, &args.out, args.dtype.map(Dtype::disk), args.torch_threads, args.overwrite)?;
    writeln!(
        std::io::stdout(),
        "quantized {} linears to NF4, kept {} tensors: {} ({:.1} MiB of tensors; peak RSS {:.0} MiB)",
        summary.quantized,
        summary.kept,
        args.out.display(),
        summary.bytes as f64 / (1 << 20) as f64,
        peak_rss_bytes() as f64 / (1 << 20) as f64
    )?;
    Ok(())
}
