//! The dtypes a checkpoint may hold on disk, and conversion to and from f32.

use half::{bf16, f16};
use safetensors::Dtype;

/// A dtype of tensors on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskDtype {
    F32,
    BF16,
    F16,
    /// Bytes: bitsandbytes' packed NF4 codes, quantized absmaxes and quant states.
    U8,
}

impl DiskDtype {
    pub fn from_safetensors(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F32 => Some(Self::F32),
            Dtype::BF16 => Some(Self::BF16),
            Dtype::F16 => Some(Self::F16),
            Dtype::U8 => Some(Self::U8),
            _ => None,
        }
    }

    /// The HF / torch spelling of a float dtype (`torch_dtype` in config.json): float32,
    /// bfloat16, float16.
    pub fn from_torch_name(name: &str) -> Option<Self> {
        match name {
            "float32" | "f32" => Some(Self::F32),
            "bfloat16" | "bf16" => Some(Self::BF16),
            "float16" | "f16" => Some(Self::F16),
            _ => None,
        }
    }

    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::BF16 => "bfloat16",
            Self::F16 => "float16",
            Self::U8 => "uint8",
        }
    }

    /// The name in a safetensors header.
    pub fn header_name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::BF16 => "BF16",
            Self::F16 => "F16",
            Self::U8 => "U8",
        }
    }

    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::BF16 | Self::F16 => 2,
            Self::U8 => 1,
        }
    }

    /// Little-endian bytes of this dtype -> f32, appended to `out`.
    pub fn decode_into(self, bytes: &[u8], out: &mut Vec<f32>) {
        match self {
            Self::F32 => out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            Self::BF16 => out.extend(bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
            Self::F16 => out.extend(bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())),
            Self::U8 => out.extend(bytes.iter().map(|b| *b as f32)),
        }
    }

    /// f32 -> little-endian bytes of this dtype (round to nearest even; saturating for U8),
    /// appended to `out`.
    pub fn encode_into(self, values: &[f32], out: &mut Vec<u8>) {
        match self {
            Self::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
            Self::BF16 => out.extend(values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes())),
            Self::F16 => out.extend(values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes())),
            Self::U8 => out.extend(values.iter().map(|v| v.round() as u8)),
        }
    }

    /// Rounds `values` to this dtype in place (what a cast to it and back to f32 gives).
    pub fn round(self, values: &mut [f32]) {
        let round: fn(f32) -> f32 = match self {
            Self::F32 => return,
            Self::BF16 => |v| bf16::from_f32(v).to_f32(),
            Self::F16 => |v| f16::from_f32(v).to_f32(),
            Self::U8 => |v| v.round().clamp(0.0, 255.0),
        };
        values.iter_mut().for_each(|v| *v = round(*v));
    }
}

impl std::fmt::Display for DiskDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.torch_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let values = [1.0f32, -2.5, 0.1, 65504.0];
        for dtype in [DiskDtype::F32, DiskDtype::BF16, DiskDtype::F16] {
            let mut bytes = Vec::new();
            dtype.encode_into(&values, &mut bytes);
            assert_eq!(bytes.len(), values.len() * dtype.size());
            let mut back = Vec::new();
            dtype.decode_into(&bytes, &mut back);
            for (a, b) in values.iter().zip(&back) {
                assert!((a - b).abs() <= a.abs() * 1e-2, "{dtype}: {a} vs {b}");
            }
        }
    }
}
