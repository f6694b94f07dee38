//! bitsandbytes NF4 checkpoints in and out, against what transformers + bitsandbytes 0.50 save
//! (tests/fixtures/tiny-mistral/qlora: `nf4/` from the f32 model, `nf4-bf16/` from the bf16 one,
//! `dequantized.safetensors` from bitsandbytes' `dequantize_4bit`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use safetensors::tensor::TensorView;
use serde_json::Value;
use shard_checkpoint::{DiskDtype, Nf4Checkpoint, quantize_checkpoint};
use shard_model::is_quantized_linear;
use shard_model::{MistralConfig, all_params};
use shard_nf4::{BlockIndexing, TorchReduction};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-mistral")
}

fn config(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every tensor of `ours` equals the one of the same name in `theirs`: dtype, shape and bytes.
fn assert_same_tensors(ours: &Path, theirs: &Path) {
    let (a, b) = (read_file(ours), read_file(theirs));
    let (a, b) = (SafeTensors::deserialize(&a).unwrap(), SafeTensors::deserialize(&b).unwrap());
    let mut names_a = a.names();
    let mut names_b = b.names();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b, "tensor names");
    for name in names_a {
        let (x, y) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{name}: dtype and shape");
        assert!(x.data() == y.data(), "{name}: the bytes differ from bitsandbytes'");
    }
}

fn quantize_to_temp(dir: &Path) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let summary = quantize_checkpoint(dir, &config(dir), out.path(), None, TorchReduction::default()).unwrap();
    assert_eq!((summary.quantized, summary.kept), (14, 7));
    out
}

#[test]
fn quantizing_tiny_mistral_gives_what_bitsandbytes_saves() {
    let out = quantize_to_temp(&fixtures());
    let reference = fixtures().join("qlora/nf4");
    assert_same_tensors(&out.path().join("model.safetensors"), &reference.join("model.safetensors"));
    let ours = config(out.path());
    assert_eq!(ours["quantization_config"], config(&reference)["quantization_config"]);
    assert_eq!(ours["dtype"], "float32");
}

/// The bf16 checkpoint (its config saying bfloat16): quant states say bfloat16, the embedding,
/// norms and head stay bf16.
#[test]
fn quantizing_a_bf16_checkpoint_gives_what_bitsandbytes_saves() {
    let src = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("sharded")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, src.path().join(path.file_name().unwrap())).unwrap();
    }
    let mut cfg = config(src.path());
    cfg["dtype"] = "bfloat16".into();
    std::fs::write(src.path().join("config.json"), cfg.to_string()).unwrap();
    let out = quantize_to_temp(src.path());
    assert_same_tensors(&out.path().join("model.safetensors"), &fixtures().join("qlora/nf4-bf16/model.safetensors"));
}

fn open_reference() -> Nf4Checkpoint {
    let dir = fixtures().join("qlora/nf4");
    let cfg = config(&dir);
    Nf4Checkpoint::open(&dir, &cfg, &MistralConfig::from_json(&cfg, &dir).unwrap()).unwrap()
}

#[test]
fn a_prequantized_checkpoint_dequantizes_as_bitsandbytes() {
    let nf4 = open_reference();
    let reference = read_file(&fixtures().join("qlora/dequantized.safetensors"));
    let reference = SafeTensors::deserialize(&reference).unwrap();
    let specs = all_params(&MistralConfig::from_file(&fixtures().join("config.json")).unwrap());
    let quantized: Vec<_> = specs.iter().filter(|s| is_quantized_linear(&s.name)).collect();
    assert_eq!(quantized.len(), reference.len());
    for spec in quantized {
        let theirs: Vec<f32> =
            reference.tensor(&spec.name).unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        // Made on an AVX-512 CPU: down_proj's width 160 takes that kernel's row indexing.
        let ours = nf4.dequantize(&spec.name, BlockIndexing::bitsandbytes_cpu(&spec.shape, true)).unwrap();
        assert!(
            ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: differs from bitsandbytes' dequantize_4bit",
            spec.name
        );
        let flat = nf4.dequantize(&spec.name, BlockIndexing::Flat).unwrap();
        assert_eq!(flat == ours, !spec.name.contains("down_proj"), "{}", spec.name);
    }
}

#[test]
fn nf4_bytes_are_read_by_element_range() {
    let nf4 = open_reference();
    let name = "model.layers.1.mlp.down_proj.weight";
    let whole = nf4.tensor(name).unwrap();
    assert_eq!(whole.shape, vec![64, 160]);
    assert_eq!(nf4.packed_range(name, 128..1001).unwrap(), whole.packed[64..501]);
    assert_eq!(nf4.absmax_codes_range(name, 2..5).unwrap(), whole.absmax_codes[2..5]);
    assert_eq!(nf4.quant_state(name).unwrap().dtype, DiskDtype::F32);
    assert!(nf4.quant_state("lm_head.weight").is_none());
    assert_eq!(nf4.checkpoint().read_f32("lm_head.weight").unwrap().len(), 64_000);
}

#[test]
fn quantizing_a_quantized_model_is_refused() {
    let dir = fixtures().join("qlora/nf4");
    let err = quantize_checkpoint(&dir, &config(&dir), tempfile::tempdir().unwrap().path(), None, TorchReduction::default()).unwrap_err();
    assert!(err.to_string().contains("`quantization_config`: the model is quantized already"), "{err}");
}

type Tensors = BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>;

/// A copy of the reference with `edit` applied to its tensors and `edit_config` to its
/// config.json; returns the error of opening it.
fn open_damaged(edit: impl FnOnce(&mut Tensors), edit_config: impl FnOnce(&mut Value)) -> String {
    let src = fixtures().join("qlora/nf4");
    let bytes = read_file(&src.join("model.safetensors"));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Tensors = st.tensors().into_iter().map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec()))).collect();
    edit(&mut tensors);
    let dir = tempfile::tempdir().unwrap();
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    let mut cfg = config(&src);
    edit_config(&mut cfg);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let model = MistralConfig::from_json(&cfg, &src).unwrap();
    Nf4Checkpoint::open(dir.path(), &cfg, &model).err().expect("a damaged checkpoint is refused").to_string()
}

const WEIGHT: &str = "model.layers.0.self_attn.q_proj.weight";
const STATE: &str = "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4";

fn edit_state(tensors: &mut Tensors, from: &str, to: &str) {
    let (_, shape, bytes) = tensors.get_mut(STATE).unwrap();
    let json = String::from_utf8(bytes.clone()).unwrap();
    assert!(json.contains(from), "{json}");
    *bytes = json.replace(from, to).into_bytes();
    *shape = vec![bytes.len()];
}

#[test]
fn other_quantizations_are_refused_by_key() {
    let err = open_damaged(|_| {}, |c| c["quantization_config"]["bnb_4bit_quant_type"] = "fp4".into());
    assert!(err.contains("`quantization_config.bnb_4bit_quant_type`: is \"fp4\"; only nf4 is read"), "{err}");
    let err = open_damaged(|_| {}, |c| c["quantization_config"]["bnb_4bit_quant_storage"] = "bfloat16".into());
    assert!(err.contains("`quantization_config.bnb_4bit_quant_storage`: is \"bfloat16\""), "{err}");
    let err = open_damaged(|_| {}, |c| c["quantization_config"]["bnb_4bit_use_double_quant"] = false.into());
    assert!(err.contains("`quantization_config.bnb_4bit_use_double_quant`"), "{err}");
    let err = open_damaged(
        |_| {},
        |c| {
            c.as_object_mut().unwrap().remove("quantization_config");
        },
    );
    assert!(err.contains("`quantization_config`: missing"), "{err}");
}

#[test]
fn damaged_quant_states_are_refused_by_tensor() {
    let err = open_damaged(|t| edit_state(t, "\"blocksize\": 64", "\"blocksize\": 128"), |_| {});
    assert!(err.contains(&format!("`{STATE}`: damaged quant state: blocksize is 128; only 64 is read")), "{err}");
    let err = open_damaged(|t| edit_state(t, "\"nf4\"", "\"fp4\""), |_| {});
    assert!(err.contains(STATE) && err.contains("only nf4"), "{err}");
    let err = open_damaged(|t| edit_state(t, "\"float32\", \"shape\"", "\"int8\", \"shape\""), |_| {});
    assert!(err.contains(STATE) && err.contains("dtype \"int8\""), "{err}");
    let err = open_damaged(|t| edit_state(t, "\"shape\": [64, 64]", "\"shape\": [64, 32]"), |_| {});
    assert!(err.contains(STATE) && err.contains("[64, 32]"), "{err}");
    let err = open_damaged(|t| edit_state(t, "\"nested_dtype\"", "\"nested_dt"), |_| {});
    assert!(err.contains(STATE) && err.contains("not a JSON quant state"), "{err}");
    let err = open_damaged(
        |t| {
            t.remove(STATE);
        },
        |_| {},
    );
    assert!(err.contains(&format!("`{STATE}`: missing")), "{err}");
    let err = open_damaged(
        |t| {
            let state = t.remove(STATE).unwrap();
            t.insert(STATE.replace("nf4", "fp4"), state);
        },
        |_| {},
    );
    assert!(err.contains("bitsandbytes__fp4`: an fp4 quant state"), "{err}");
}

#[test]
fn other_storage_and_damaged_parts_are_refused_by_tensor() {
    // bf16 storage: the same bytes as half as many bf16 values.
    let err = open_damaged(
        |t| {
            let (dtype, shape, _) = t.get_mut(WEIGHT).unwrap();
            *dtype = safetensors::Dtype::BF16;
            *shape = vec![1024, 1];
        },
        |_| {},
    );
    assert!(err.contains(WEIGHT) && err.contains("[1024, 1]"), "{err}");
    let err = open_damaged(
        |t| {
            let (dtype, _, _) = t.get_mut(&format!("{WEIGHT}.absmax")).unwrap();
            *dtype = safetensors::Dtype::I8;
        },
        |_| {},
    );
    assert!(err.contains(&format!("`{WEIGHT}.absmax` has dtype I8")), "{err}");
    let err = open_damaged(|t| t.get_mut(&format!("{WEIGHT}.quant_map")).unwrap().2[0] ^= 1, |_| {});
    assert!(err.contains(&format!("`{WEIGHT}.quant_map`: is not the NF4 code book")), "{err}");
    let err = open_damaged(
        |t| {
            t.remove(&format!("{WEIGHT}.nested_absmax"));
        },
        |_| {},
    );
    assert!(err.contains("missing") && err.contains(&format!("{WEIGHT}.nested_absmax")), "{err}");
}
