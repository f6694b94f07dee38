//! peft's adapter format: tensor names (ours with peft's `base_model.model.` prefix) and
//! `adapter_config.json`, as `PeftModel.save_pretrained` writes them.

use shard_model::LoraConfig;

/// What peft puts before a parameter's name in the base model.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// `model.layers.0.self_attn.q_proj.lora_A.weight` ->
/// `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`
pub fn peft_name(name: &str) -> String {
    format!("{PEFT_PREFIX}{name}")
}

/// The `adapter_config.json` of a LoRA adapter on a causal LM.
pub fn adapter_config(lora: &LoraConfig, base_model: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lora.r,
        // peft writes an integer alpha as an integer.
        "lora_alpha": if lora.alpha.fract() == 0.0 { serde_json::json!(lora.alpha as i64) } else { serde_json::json!(lora.alpha) },
        "lora_dropout": lora.dropout,
        "target_modules": lora.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    })
}
