//! TensorBoard's event files, written by hand (the Rust writers on crates.io are unmaintained
//! and pull in protobuf 2 and image): a file of TFRecords, each one a protobuf `Event` of
//! tensorflow/core/util/event.proto. The first event names the file version; each later one
//! holds a step's scalars as `Summary.Value { tag, simple_value }`.
//!
//! TFRecord: u64 length (little-endian), u32 masked CRC-32C of the length bytes, the data, u32
//! masked CRC-32C of the data.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::metrics::log::StepMetrics;

pub struct EventWriter {
    out: BufWriter<File>,
}

impl EventWriter {
    /// A new event file in `dir` (created if needed), named as TensorFlow names them.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let host = crate::system::topology::this_host();
        let name = format!("events.out.tfevents.{}.{host}.{}", unix_seconds() as u64, std::process::id());
        let path = dir.join(name);
        let file = File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
        let mut writer = Self { out: BufWriter::new(file) };
        let mut event = event_header(0);
        field_bytes(&mut event, 3, b"brain.Event:2"); // file_version
        writer.write_record(&event)?;
        Ok(writer)
    }

    /// The step's scalars: train loss, eval loss (when evaluated), lr, grad norm, tokens/s and
    /// memory, as one event.
    pub fn step_scalars(&mut self, m: &StepMetrics) -> Result<()> {
        let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
        let mut scalars = vec![
            ("train/loss", m.loss),
            ("train/lr", m.lr),
            ("train/grad_norm", m.grad_norm),
            ("train/tokens_per_s", m.tokens_per_s),
            ("train/exposed_comm_s", m.exposed_comm_s),
            ("memory/peak_engine_mib", mib(m.peak_engine_bytes)),
            ("memory/model_states_mib", mib(m.model_state_bytes)),
        ];
        if let Some(eval_loss) = m.eval_loss {
            scalars.push(("eval/loss", eval_loss));
        }
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            field_bytes(&mut v, 1, tag.as_bytes());
            v.push(2 << 3 | 5); // simple_value: field 2, 32-bit
            v.extend_from_slice(&(value as f32).to_le_bytes());
            field_bytes(&mut summary, 1, &v);
        }
        let mut event = event_header(m.step);
        field_bytes(&mut event, 5, &summary);
        self.write_record(&event)
    }

    fn write_record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc32c(&len).to_le_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(&masked_crc32c(data).to_le_bytes())?;
        self.out.flush()?;
        Ok(())
    }
}

/// An `Event` with its wall_time (field 1, a double) and step (field 2, a varint).
fn event_header(step: u64) -> Vec<u8> {
    let mut event = vec![1 << 3 | 1];
    event.extend_from_slice(&unix_seconds().to_le_bytes());
    event.push(2 << 3);
    varint(&mut event, step);
    event
}

/// A length-delimited field (strings, bytes, embedded messages).
fn field_bytes(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

fn unix_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// TFRecord's checksum: CRC-32C, rotated right by 15 bits, plus a constant.
fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli), bit by bit: records are small and written once per step.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // RFC 3720 (iSCSI), B.4: CRC-32C of "123456789".
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn varints_are_little_endian_groups_of_seven_bits() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
    }
}
