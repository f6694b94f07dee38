//! Mistral in Burn, generic over the backend: the HF `config.json`, parameter names and shapes,
//! and the blocks (embedding, decoder layer, head) each buildable from named tensors.
//! It knows nothing of ranks or shards: the engine in `shard-zero` runs these blocks one by one.
//!
//! Without the default `burn` feature only the config and the parameter names and shapes are
//! built: what the planner needs, without compiling a tensor library.

mod config;
pub mod hash;
mod params;

pub use config::{ConfigError, MistralConfig};
pub use params::{
    Block, BlockParts, LoraConfig, PROJECTIONS, ParamSpec, all_params, is_quantized_linear, lora_params, param_count, projection_module,
    projection_shape, trainable_param_count,
};

#[cfg(feature = "burn")]
mod attention;
#[cfg(feature = "burn")]
mod decode;
#[cfg(feature = "burn")]
mod embedding;
#[cfg(feature = "burn")]
mod kv_cache;
#[cfg(feature = "burn")]
mod layer;
#[cfg(feature = "burn")]
mod linear;
#[cfg(feature = "burn")]
mod lora;
#[cfg(feature = "burn")]
mod loss;
#[cfg(feature = "burn")]
mod mlp;
#[cfg(feature = "burn")]
mod model;
#[cfg(feature = "burn")]
mod norm;
#[cfg(feature = "burn")]
mod rope;
#[cfg(feature = "burn")]
mod sampling;
#[cfg(feature = "burn")]
mod weights;

#[cfg(feature = "burn")]
pub use {
    attention::Attention,
    decode::{Decoder, GenerateOptions, generate, inference_model},
    embedding::{Embedding, Head},
    kv_cache::KvCache,
    layer::{DecoderLayer, LayerLora},
    linear::Linear,
    lora::LoraAdapter,
    loss::{cross_entropy_sum, predicting_positions, target_count},
    mlp::Mlp,
    model::Mistral,
    norm::RmsNorm,
    rope::{SequenceContext, may_attend},
    sampling::{SampleOptions, Sampling},
    weights::{Weights, WeightsError},
};
