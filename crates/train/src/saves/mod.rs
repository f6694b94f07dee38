//! What the run writes to keep: sharded saves and the resume from one, exports, NF4 quantization, the output directory's lock.

pub mod export;
pub mod export_save;
pub mod output_dir;
pub mod quantize;
pub mod save;
pub mod saver;
