//! NF4 against bitsandbytes 0.50's own output on the CPU (tests/fixtures/nf4, made by
//! tools/make_nf4_fixture.py and tools/make_nf4_cases.py): every byte of the packed
//! codes and of the double-quantized absmax, the offset, and every dequantized value.

use std::path::PathBuf;

use half::bf16;
use safetensors::{Dtype, SafeTensors};
use shard_nf4::{BlockIndexing, Nf4Tensor, TorchReduction, dynamic_map, quantize};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/nf4").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Fixture<'a>(SafeTensors<'a>);

impl Fixture<'_> {
    fn bytes(&self, name: &str) -> Vec<u8> {
        let t = self.0.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::U8, "{name}");
        t.data().to_vec()
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        let t = self.0.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        match t.dtype() {
            Dtype::F32 => t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            Dtype::BF16 => t.data().chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn shape(&self, name: &str) -> Vec<usize> {
        self.0.tensor(name).unwrap().shape().to_vec()
    }
}

/// Bit-for-bit equality of f32 vectors, naming the first difference.
fn assert_bits_eq(what: &str, ours: &[f32], theirs: &[f32]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    if let Some(i) = (0..ours.len()).find(|&i| ours[i].to_bits() != theirs[i].to_bits()) {
        let differ = (0..ours.len()).filter(|&i| ours[i].to_bits() != theirs[i].to_bits()).count();
        panic!("{what}: {differ} values differ, the first at {i}: {} vs bitsandbytes' {}", ours[i], theirs[i]);
    }
}

fn round_to_bf16(values: Vec<f32>) -> Vec<f32> {
    values.into_iter().map(|v| bf16::from_f32(v).to_f32()).collect()
}

/// Quantizes `input`, checks every stored part against the fixture's `prefix.*` tensors, and
/// returns the tensor.
fn check_quantized(fx: &Fixture, input: &[f32], shape: &[usize], names: &QuantNames) -> Nf4Tensor {
    let nf4 = quantize(input, shape, TorchReduction::default());
    assert_eq!(nf4.packed, fx.bytes(&names.packed), "{}: packed codes", names.packed);
    assert_eq!(nf4.absmax_codes, fx.bytes(&names.absmax_codes), "{}", names.absmax_codes);
    assert_bits_eq(&names.nested_absmax, &nf4.nested_absmax, &fx.f32s(&names.nested_absmax));
    assert_bits_eq(&names.offset, &[nf4.offset], &fx.f32s(&names.offset));
    nf4
}

struct QuantNames {
    packed: String,
    absmax_codes: String,
    nested_absmax: String,
    offset: String,
}

#[test]
fn the_dynamic_map_is_bitsandbytes() {
    let bytes = fixture("nf4_cases.safetensors");
    let fx = Fixture(SafeTensors::deserialize(&bytes).unwrap());
    assert_bits_eq("dynamic_map", &dynamic_map(), &fx.f32s("dynamic_map"));
    let bytes = fixture("nf4.safetensors");
    let fx = Fixture(SafeTensors::deserialize(&bytes).unwrap());
    assert_bits_eq("absmax_code", &dynamic_map(), &fx.f32s("absmax_code"));
    assert_bits_eq("code", &shard_nf4::NF4_LEVELS, &fx.f32s("code"));
}

/// make_nf4_fixture.py: a [96, 256] bf16 weight with an outlier and an all-zero block.
#[test]
fn shared_fixture_bf16_weight() {
    let bytes = fixture("nf4.safetensors");
    let fx = Fixture(SafeTensors::deserialize(&bytes).unwrap());
    let input = fx.f32s("weight_bf16");
    let shape = fx.shape("weight_bf16");
    let names = QuantNames {
        packed: "q_double".into(),
        absmax_codes: "absmax_q".into(),
        nested_absmax: "absmax_nested".into(),
        offset: "absmax_offset".into(),
    };
    let nf4 = check_quantized(&fx, &input, &shape, &names);
    assert_eq!(nf4.packed, fx.bytes("q_single"));
    let indexing = BlockIndexing::bitsandbytes_cpu(&shape, true);
    assert_bits_eq("dq_double", &round_to_bf16(nf4.dequantize(indexing)), &fx.f32s("dq_double"));
}

/// Widths that are not multiples of 64 (160, 100, 45), an all-zero block, an outlier, and values
/// on the midpoints between levels; f32 and bf16 inputs.
#[test]
fn cases_quantize_and_dequantize_bit_for_bit() {
    let bytes = fixture("nf4_cases.safetensors");
    let fx = Fixture(SafeTensors::deserialize(&bytes).unwrap());
    for case in ["w160", "w100", "w45", "ties"] {
        let weight = format!("{case}.weight");
        let shape = fx.shape(&weight);
        for dtype in ["f32", "bf16"] {
            let p = format!("{case}.{dtype}");
            // bitsandbytes returns the dequantized weight in the input's dtype.
            let round = |values: Vec<f32>| {
                if dtype == "bf16" { round_to_bf16(values) } else { values }
            };
            let input = round(fx.f32s(&weight));
            let names = QuantNames {
                packed: format!("{p}.packed"),
                absmax_codes: format!("{p}.absmax_q"),
                nested_absmax: format!("{p}.nested_absmax"),
                offset: format!("{p}.offset"),
            };
            let nf4 = check_quantized(&fx, &input, &shape, &names);
            let bnb_cpu = BlockIndexing::bitsandbytes_cpu(&shape, true);
            assert_bits_eq(&format!("{p}.dq"), &round(nf4.dequantize(bnb_cpu)), &fx.f32s(&format!("{p}.dq")));
            assert_bits_eq(&format!("{p}.dq_flat"), &round(nf4.dequantize(BlockIndexing::Flat)), &fx.f32s(&format!("{p}.dq_flat")));
        }
    }
}

#[test]
fn a_range_dequantizes_as_the_whole() {
    let bytes = fixture("nf4_cases.safetensors");
    let fx = Fixture(SafeTensors::deserialize(&bytes).unwrap());
    let nf4 = quantize(&fx.f32s("w45.weight"), &fx.shape("w45.weight"), TorchReduction::default());
    let whole = nf4.dequantize(BlockIndexing::Flat);
    assert_eq!(nf4.dequantize_range(63..200, BlockIndexing::Flat), whole[63..200]);
}

/// torch's mean over more than its grain of 32,768 elements, on 1, 2 and 3 threads.
#[test]
fn the_mean_is_torch_for_any_thread_count() {
    let bytes = fixture("nf4_cases.safetensors");
    let fx = Fixture(SafeTensors::deserialize(&bytes).unwrap());
    let input = fx.f32s("sum.input");
    for threads in [1, 2, 3] {
        let mean = TorchReduction { threads }.mean(&input);
        assert_bits_eq(&format!("sum.mean.t{threads}"), &[mean], &fx.f32s(&format!("sum.mean.t{threads}")));
    }
}

/// The 8-bit step of the double quantization on 70,000 values (274 blocks of 256).
#[test]
fn blockwise_8bit_codes_are_bitsandbytes() {
    let bytes = fixture("nf4_cases.safetensors");
    let fx = Fixture(SafeTensors::deserialize(&bytes).unwrap());
    let mean = fx.f32s("sum.mean.t1")[0];
    let centred: Vec<f32> = fx.f32s("sum.input").iter().map(|v| v - mean).collect();
    let (codes, absmax) = shard_nf4::quantize_blockwise_8bit(&centred, &dynamic_map(), shard_nf4::NESTED_BLOCK);
    assert_eq!(codes, fx.bytes("sum.centred.codes"));
    assert_bits_eq("sum.centred.absmax", &absmax, &fx.f32s("sum.centred.absmax"));
}

#[test]
fn the_offset_is_known_before_quantizing() {
    let bytes = fixture("nf4_cases.safetensors");
    let fx = Fixture(SafeTensors::deserialize(&bytes).unwrap());
    let values = fx.f32s("w45.weight");
    let torch = TorchReduction::default();
    assert_eq!(shard_nf4::offset_of(&values, torch), quantize(&values, &fx.shape("w45.weight"), torch).offset);
}
