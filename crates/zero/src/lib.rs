//! The ZeRO-3 engine: every unit (embedding, each decoder layer, the head) is a flat vector
//! padded to its shard group's size (every rank, or `runtime.shard_size` of them), of which each
//! rank holds one slice with its AdamW state. Units are all-gathered within the group only while
//! they run; gradients are reduce-scattered back into the slices and summed across the groups.
//! It applies to the model from the outside: `shard-model` knows nothing of shards.

mod accounting;
mod adamw8bit;
mod comm_clock;
mod engine;
mod groups;
mod init;
mod layout;
mod memory;
mod nf4_part;
mod normal;
mod optimizer;
mod owner_thread;
mod precision;
mod resume;
mod schedule;
mod unit;

pub use accounting::{StateFootprint, state_footprint};
pub use adamw8bit::{BLOCK as ADAMW8BIT_BLOCK, Blockwise8State, MIN_8BIT_SIZE, OptimizerKind, Slots};
pub use engine::{Adapters, Engine, EngineError, EvalReport, ExportKind, FlatPart, StepReport, TrainSettings, UnitSink};
pub use groups::ShardGroups;
pub use init::{LoraInit, ParamSource, PeftAdapters, RandomInit, read_shard};
pub use layout::{FlatLayout, Piece};
pub use memory::{Category, MemoryLedger};
pub use nf4_part::{Dequantized, Nf4Layout, Nf4Part, Nf4Source};
pub use optimizer::AdamW;
pub use precision::MixedPrecision;
pub use resume::{NF4_PART, SavedShard};
pub use schedule::LrSchedule;
pub use shard_core::Dtype;
pub use unit::{HostStates, OptimState, Part, Unit};
