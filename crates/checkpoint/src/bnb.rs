//! bitsandbytes' serialization of a 4-bit linear, as transformers saves it: the tensors next to
//! each quantized `weight`, the JSON quant state packed into a U8 tensor
//! (`QuantState.as_dict(packed=True)`), and config.json's `quantization_config`.

use shard_nf4::{NF4_LEVELS, Nf4Tensor};

use crate::{DiskDtype, TensorHeader};

/// The quant state tensor's suffix; its name carries the quant type.
pub const QUANT_STATE_NF4: &str = "quant_state.bitsandbytes__nf4";

/// The tensors that stand for a quantized weight `name`, in the order written (the packed codes
/// keep the weight's own name).
pub fn nf4_part_names(name: &str) -> [String; 6] {
    [
        name.to_owned(),
        format!("{name}.absmax"),
        format!("{name}.nested_absmax"),
        format!("{name}.nested_quant_map"),
        format!("{name}.quant_map"),
        format!("{name}.{QUANT_STATE_NF4}"),
    ]
}

/// The six tensors of a quantized weight of `numel` elements (see [`nf4_part_names`]), its quant
/// state `state_len` bytes of JSON.
pub fn nf4_part_headers(name: &str, numel: usize, state_len: usize) -> Vec<TensorHeader> {
    let shapes = [
        (DiskDtype::U8, vec![numel.div_ceil(2), 1]),
        (DiskDtype::U8, vec![Nf4Tensor::blocks_of(numel)]),
        (DiskDtype::F32, vec![Nf4Tensor::nested_blocks_of(numel)]),
        (DiskDtype::F32, vec![256]),
        (DiskDtype::F32, vec![NF4_LEVELS.len()]),
        (DiskDtype::U8, vec![state_len]),
    ];
    nf4_part_names(name).into_iter().zip(shapes).map(|(name, (dtype, shape))| TensorHeader { name, dtype, shape }).collect()
}

/// The quant state of one weight: what the JSON of `weight.quant_state.bitsandbytes__nf4` holds.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantState {
    /// The dtype the weight had when quantized (and that dequantizing returns).
    pub dtype: DiskDtype,
    pub shape: Vec<usize>,
    /// The mean of the absmaxes that the double quantization subtracted.
    pub offset: f32,
}

impl QuantState {
    /// The JSON bytes exactly as Python's `json.dumps` writes bitsandbytes' dict.
    pub fn to_json(&self) -> String {
        let shape: Vec<String> = self.shape.iter().map(usize::to_string).collect();
        format!(
            r#"{{"quant_type": "nf4", "blocksize": {}, "dtype": "{}", "shape": [{}], "nested_blocksize": {}, "nested_dtype": "float32", "nested_offset": {}}}"#,
            shard_nf4::BLOCK,
            self.dtype.torch_name(),
            shape.join(", "),
            shard_nf4::NESTED_BLOCK,
            python_float_repr(self.offset as f64),
        )
    }

    /// Parses and checks a quant state: NF4, blocks of 64 with nested blocks of 256, a float dtype,
    /// an f32 nested dtype. `Err` says what is wrong, for the caller to name the tensor.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not a JSON quant state ({e})"))?;
        let field = |key: &str| value.get(key).ok_or_else(|| format!("no `{key}`"));
        let text = |key: &str| field(key)?.as_str().ok_or_else(|| format!("`{key}` is not a string"));
        let int = |key: &str| field(key)?.as_u64().ok_or_else(|| format!("`{key}` is not an integer"));
        let quant_type = text("quant_type")?;
        if quant_type != "nf4" {
            return Err(format!("quant_type is {quant_type:?}; only nf4 is read"));
        }
        for (key, expected) in [("blocksize", shard_nf4::BLOCK), ("nested_blocksize", shard_nf4::NESTED_BLOCK)] {
            let found = int(key)?;
            if found != expected as u64 {
                return Err(format!("{key} is {found}; only {expected} is read"));
            }
        }
        let dtype = text("dtype")?;
        let dtype = DiskDtype::from_torch_name(dtype)
            .filter(|d| *d != DiskDtype::U8)
            .ok_or_else(|| format!("dtype {dtype:?} is not float32, bfloat16 or float16"))?;
        let nested_dtype = text("nested_dtype")?;
        if nested_dtype != "float32" {
            return Err(format!("nested_dtype is {nested_dtype:?}; only float32 is read"));
        }
        let shape = field("shape")?
            .as_array()
            .and_then(|dims| dims.iter().map(|d| d.as_u64().map(|d| d as usize)).collect::<Option<Vec<_>>>())
            .ok_or("`shape` is not a list of sizes")?;
        let offset = field("nested_offset")?.as_f64().filter(|o| o.is_finite()).ok_or("`nested_offset` is not a finite number")? as f32;
        Ok(Self { dtype, shape, offset })
    }
}

/// config.json's `quantization_config` for NF4 with double quantization, as transformers writes
/// `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)`.
pub fn quantization_config() -> serde_json::Value {
    serde_json::json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": true,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes"
    })
}

/// Checks a config.json's `quantization_config` (`value`) describes what this crate reads:
/// bitsandbytes, 4-bit NF4, double quantization, uint8 storage. `Err((key, why))`.
pub fn check_quantization_config(value: &serde_json::Value) -> Result<(), (String, String)> {
    let expect = |key: &str, expected: serde_json::Value, what: &str| {
        let found = value.get(key).cloned().unwrap_or(serde_json::Value::Null);
        if found == expected { Ok(()) } else { Err((format!("quantization_config.{key}"), format!("is {found}; {what}"))) }
    };
    expect("quant_method", "bitsandbytes".into(), "only bitsandbytes checkpoints are read")?;
    expect("load_in_4bit", true.into(), "only 4-bit checkpoints are read")?;
    expect("bnb_4bit_quant_type", "nf4".into(), "only nf4 is read (not fp4)")?;
    expect("bnb_4bit_use_double_quant", true.into(), "only double-quantized NF4 is read")?;
    expect("bnb_4bit_quant_storage", "uint8".into(), "only uint8 storage is read")
}

/// Python's `repr(float)`: the shortest digits that read back as `x`, in fixed notation for
/// exponents from -4 to 15 and in scientific notation (`1e-05`) otherwise.
fn python_float_repr(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    // `{:e}` gives Rust's shortest round-trip digits, e.g. "-1.3206446170806885e-1".
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp.parse().expect("an integer exponent");
    let sign = if x < 0.0 { "-" } else { "" };
    // Python's `decpt`: the position of the decimal point relative to the digits.
    let decpt = exp + 1;
    let body = if decpt <= -4 || decpt > 16 {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        format!("{first}{fraction}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt as usize >= digits.len() {
        format!("{digits}{}.0", "0".repeat(decpt as usize - digits.len()))
    } else {
        let (int, frac) = digits.split_at(decpt as usize);
        format!("{int}.{frac}")
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        let cases = [
            (0.13206446170806885, "0.13206446170806885"),
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (123456.0, "123456.0"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.0, "0.0"),
        ];
        for (x, repr) in cases {
            assert_eq!(python_float_repr(x), repr, "{x}");
        }
    }

    #[test]
    fn quant_state_round_trips() {
        let state = QuantState { dtype: DiskDtype::BF16, shape: vec![64, 160], offset: 0.132_064_46 };
        let json = state.to_json();
        assert!(json.starts_with(r#"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [64, 160], "#), "{json}");
        assert_eq!(QuantState::parse(json.as_bytes()), Ok(state));
    }

    #[test]
    fn quant_states_of_other_formats_are_refused() {
        let good = QuantState { dtype: DiskDtype::F32, shape: vec![2, 64], offset: 0.5 }.to_json();
        for (from, to, why) in [
            (r#""nf4""#, r#""fp4""#, "only nf4"),
            (r#""blocksize": 64"#, r#""blocksize": 128"#, "blocksize is 128"),
            (r#""float32", "shape""#, r#""int8", "shape""#, "not float32"),
            (r#""nested_offset": 0.5"#, r#""nested_offset": "x""#, "nested_offset"),
        ] {
            let bad = good.replacen(from, to, 1);
            assert!(QuantState::parse(bad.as_bytes()).unwrap_err().contains(why), "{bad}");
        }
        assert!(QuantState::parse(&good.as_bytes()[..20]).unwrap_err().contains("not a JSON"));
    }
}
