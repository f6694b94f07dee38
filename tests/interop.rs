//! Exports load where users load them, run by the Python reference stack
//! (tools/install_python_refs.sh; see `reference_python` for what happens where it is missing):
//! the HF exports in f32 and bf16, a LoRA run's merged export and its peft adapters in
//! transformers and peft (tools/check_exports.py), and `shard-train quantize`'s NF4 checkpoint in
//! transformers + bitsandbytes (tools/check_nf4_loads.py). The QLoRA adapters on the 4-bit base
//! are checked in tests/qlora.rs.

mod common;

use std::process::Output;

use common::*;

fn assert_script_passed(out: &Output, last_line: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.lines().last() == Some(last_line), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Full fine-tuning exported in f32 and bf16 loads in transformers in the export's dtype with the
/// f32 export's loss (bf16 within 2e-2); a LoRA run's adapters load in peft from another working
/// directory with the loss of the run's merged export (within 1e-4).
#[test]
fn hf_peft_and_merged_exports_load_in_transformers_and_peft() {
    let Some(mut python) = reference_python(&["torch", "transformers", "peft"]) else { return };
    let out = python.arg(repo_root().join("tools/check_exports.py")).arg(env!("CARGO_BIN_EXE_shard-train")).output().unwrap();
    assert_script_passed(&out, "all export checks passed");
}

/// The tiny model quantized by `shard-train quantize` loads in transformers as bitsandbytes
/// Linear4bit layers (NF4, double quantization, blocks of 64) whose state dict and logits equal
/// those of the model bitsandbytes itself quantized (tests/fixtures/tiny-mistral/qlora/nf4).
#[test]
fn quantized_model_loads_in_bitsandbytes_as_bitsandbytes_quantized_it() {
    let Some(mut python) = reference_python(&["torch", "transformers", "bitsandbytes"]) else { return };
    let out_dir = tempfile::tempdir().unwrap();
    let quantize = std::process::Command::new(env!("CARGO_BIN_EXE_shard-train"))
        .args(["quantize", "--model", tiny().to_str().unwrap(), "--out", out_dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(quantize.status.success(), "{}", String::from_utf8_lossy(&quantize.stderr));
    let out = python.arg(repo_root().join("tools/check_nf4_loads.py")).arg(out_dir.path()).arg(tiny().join("qlora/nf4")).output().unwrap();
    assert_script_passed(&out, "OK");
}
