//! What a save records besides the shards (`train_state.json`): where training stands, and the
//! flat layout of every unit, so that any world size can find any element in the rank files.

use std::ops::Range;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shard_data::SamplerPosition;
use shard_model::LoraConfig;

/// The version written in every train state; a reader refuses others.
/// Version 2 added the save id, the rank files' checksums, the schedule and the base's fingerprint.
pub const FORMAT: &str = "shard-train-checkpoint/2";

/// Which array of a trainable part a rank file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardKind {
    /// The f32 parameters (with f32 compute, the master copy).
    Param,
    /// Adam's first moment.
    ExpAvg,
    /// Adam's second moment.
    ExpAvgSq,
    /// With AdamW8bit (`exp_avg` and `exp_avg_sq` then hold 8-bit codes), the scales of m and v:
    /// per slot (a block's absmax, or a small parameter's f32 state), this rank's run of slots.
    ExpAvgScale,
    ExpAvgSqScale,
}

impl ShardKind {
    /// The kinds every save holds, one element per element of the shard.
    pub const ALL: [ShardKind; 3] = [ShardKind::Param, ShardKind::ExpAvg, ShardKind::ExpAvgSq];

    fn suffix(self) -> &'static str {
        match self {
            ShardKind::Param => "param",
            ShardKind::ExpAvg => "exp_avg",
            ShardKind::ExpAvgSq => "exp_avg_sq",
            ShardKind::ExpAvgScale => "exp_avg_scale",
            ShardKind::ExpAvgSqScale => "exp_avg_sq_scale",
        }
    }
}

/// The name of a shard in a rank file: `{unit}.{part}.{kind}`, e.g. `3.adapters.exp_avg`.
pub fn shard_name(unit: usize, part: &str, kind: ShardKind) -> String {
    format!("{unit}.{part}.{}", kind.suffix())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamState {
    pub name: String,
    pub shape: Vec<usize>,
    /// Offset of the first element in the part's flat vector.
    pub offset: usize,
}

/// One part of a unit: its parameters laid out back to back, padded to the world size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartState {
    /// `base` or `adapters`.
    pub name: String,
    /// Only trainable parts are saved; a frozen part comes back from the model.
    pub trainable: bool,
    pub numel: usize,
    pub padded: usize,
    pub params: Vec<ParamState>,
}

impl PartState {
    /// Elements each rank saved.
    pub fn shard_len(&self, world_size: usize) -> usize {
        self.padded / world_size
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitState {
    /// `embedding`, `layer.{i}` or `head`.
    pub block: String,
    pub parts: Vec<PartState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format: String,
    /// Unique to one save; every rank file carries it too (metadata `save_id`), so that files of
    /// two saves are never taken for one.
    pub save_id: String,
    /// Optimizer steps done (the LR schedule's and AdamW's step count).
    pub step: u64,
    /// `train.optimizer` of the run (saves before it existed: `adamw`).
    #[serde(default = "adamw")]
    pub optimizer: String,
    /// Micro-batches done on each rank: the counter the LoRA dropout masks are drawn from.
    pub micro_batches_done: u64,
    /// Where the next step's examples start.
    pub sampler: SamplerPosition,
    pub examples_per_step: u64,
    /// The learning-rate schedule the steps were taken with.
    pub schedule: ScheduleState,
    pub world_size: usize,
    /// The model's config.json as it was read.
    pub model_config: serde_json::Value,
    /// The checkpoint the run started from (a LoRA export merges into it); none for a random init.
    pub model_path: Option<PathBuf>,
    pub lora: Option<LoraConfig>,
    /// The frozen base is `model_path`'s NF4 (QLoRA): a merge dequantizes it as the run did.
    #[serde(default)]
    pub nf4_base: bool,
    /// The tokenizer.json the run's data was tokenized with (an export carries it).
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// The chat template the run's conversations were rendered with (`data.format = "chat"` or
    /// `"messages"`): an export carries it.
    #[serde(default, deserialize_with = "chat_template_or_older_flag", alias = "chat")]
    pub chat_template: Option<String>,
    pub units: Vec<UnitState>,
    /// The fingerprint of the checkpoint the run started from ([`crate::HfCheckpoint::fingerprint`]),
    /// checked when a LoRA run resumes on it; none for a random init.
    pub model_fingerprint: Option<String>,
    /// One file per rank, in rank order.
    pub rank_files: Vec<String>,
    /// The xxh3-64 of each rank file, in hex, in rank order.
    pub rank_checksums: Vec<String>,
}

fn adamw() -> String {
    "adamw".into()
}

/// `chat_template`, or the `chat` flag saves wrote before they kept the template: `true` was
/// always the chat format's template.
fn chat_template_or_older_flag<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Recorded {
        Template(Option<String>),
        Flag(bool),
    }
    Ok(match Recorded::deserialize(deserializer)? {
        Recorded::Template(template) => template,
        Recorded::Flag(chat) => chat.then(|| shard_data::MISTRAL_CHAT_TEMPLATE.to_owned()),
    })
}

/// A learning-rate schedule as the run config states it (`train.lr_schedule`, `lr`,
/// `warmup_steps`, `steps`): a resume that changes it re-stretches the schedule under the steps done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    pub kind: String,
    pub lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl ScheduleState {
    /// `train.steps: saved 100, now 200` for each setting that differs and changes the rates
    /// (a constant schedule does not depend on the number of steps).
    pub fn differences(&self, now: &ScheduleState) -> Vec<String> {
        let mut out = Vec::new();
        let mut compare = |key: &str, saved: String, current: String| {
            if saved != current {
                out.push(format!("train.{key}: saved {saved}, now {current}"));
            }
        };
        compare("lr_schedule", self.kind.clone(), now.kind.clone());
        compare("lr", self.lr.to_string(), now.lr.to_string());
        compare("warmup_steps", self.warmup_steps.to_string(), now.warmup_steps.to_string());
        if (self.kind.as_str(), now.kind.as_str()) != ("constant", "constant") {
            compare("steps", self.total_steps.to_string(), now.total_steps.to_string());
        }
        out
    }
}

/// The saved rank files a flat range of a part lives in: (rank, range within that rank's shard,
/// where it lands in the requested range).
pub fn rank_pieces(shard_len: usize, range: Range<usize>) -> Vec<(usize, Range<usize>, usize)> {
    let mut pieces = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let rank = at / shard_len;
        let end = range.end.min((rank + 1) * shard_len);
        pieces.push((rank, at - rank * shard_len..end - rank * shard_len, at - range.start));
        at = end;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_schedule_changes_that_change_the_rates_count() {
        let constant = ScheduleState { kind: "constant".into(), lr: 1e-4, warmup_steps: 10, total_steps: 100 };
        assert!(constant.differences(&ScheduleState { total_steps: 200, ..constant.clone() }).is_empty());
        let cosine = ScheduleState { kind: "cosine".into(), ..constant.clone() };
        assert_eq!(cosine.differences(&ScheduleState { total_steps: 200, ..cosine.clone() }), ["train.steps: saved 100, now 200"]);
        assert_eq!(constant.differences(&ScheduleState { lr: 2e-4, ..constant.clone() }), ["train.lr: saved 0.0001, now 0.0002"]);
    }

    /// Saves written before the template was kept say `"chat": true` for the chat format.
    #[test]
    fn older_saves_chat_flag_reads_as_the_chat_formats_template() {
        #[derive(Deserialize)]
        struct Recorded {
            #[serde(default, deserialize_with = "chat_template_or_older_flag", alias = "chat")]
            chat_template: Option<String>,
        }
        let read = |json: &str| serde_json::from_str::<Recorded>(json).unwrap().chat_template;
        assert_eq!(read(r#"{"chat": true}"#).as_deref(), Some(shard_data::MISTRAL_CHAT_TEMPLATE));
        assert_eq!(read(r#"{"chat": false}"#), None);
        assert_eq!(read(r#"{"chat_template": "{{ t }}"}"#).as_deref(), Some("{{ t }}"));
        assert_eq!(read(r#"{"chat_template": null}"#), None);
        assert_eq!(read("{}"), None);
    }

    #[test]
    fn ranges_map_onto_old_ranks() {
        // 4 ranks of 5 elements; elements 3..12 span ranks 0, 1 and 2.
        assert_eq!(rank_pieces(5, 3..12), vec![(0, 3..5, 0), (1, 0..5, 2), (2, 0..2, 7)]);
        assert_eq!(rank_pieces(5, 10..15), vec![(2, 0..5, 0)]);
        assert!(rank_pieces(5, 4..4).is_empty());
    }
}
