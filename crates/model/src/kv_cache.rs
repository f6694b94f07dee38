//! The keys and values of the tokens seen so far, per layer, for decoding one token at a time.
//!
//! With Mistral's sliding window a query sees only the last `window` keys (itself included), so
//! the cache is a rolling buffer of `window` slots: position p lives in slot p % window and
//! overwrites position p - window, which no later query sees. Keys are stored rotated (RoPE at
//! their own position), so the order of the slots does not matter to attention.

use burn::tensor::{DType, Tensor, backend::Backend};

use crate::MistralConfig;

/// One layer's keys and values: [1, kv_heads, slots, head_dim] each.
#[derive(Debug, Clone)]
struct LayerCache<B: Backend> {
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
}

#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
    slots: usize,
    /// Tokens written so far (the position of the next one).
    seen: usize,
}

impl<B: Backend> KvCache<B> {
    /// A cache for a sequence of at most `max_len` tokens: `min(max_len, window)` slots per layer.
    pub fn new(cfg: &MistralConfig, max_len: usize, device: &B::Device, dtype: DType) -> Self {
        let slots = cfg.sliding_window.map_or(max_len, |w| w.min(max_len)).max(1);
        let empty = || Tensor::zeros([1, cfg.num_key_value_heads, slots, cfg.head_dim], (device, dtype));
        let layers = (0..cfg.num_hidden_layers).map(|_| LayerCache { keys: empty(), values: empty() }).collect();
        Self { layers, slots, seen: 0 }
    }

    /// The position of the next token.
    pub fn seen(&self) -> usize {
        self.seen
    }

    /// Stores layer `layer`'s keys and values [1, kv_heads, n, head_dim] of the `n` tokens from
    /// position `seen()`; of a run longer than the buffer only the last `slots` can be seen again.
    pub fn write(&mut self, layer: usize, keys: Tensor<B, 4>, values: Tensor<B, 4>) {
        let n = keys.dims()[2];
        let cache = &mut self.layers[layer];
        for i in n.saturating_sub(self.slots)..n {
            let slot = (self.seen + i) % self.slots;
            let [_, heads, _, dim] = cache.keys.dims();
            let at = [0..1, 0..heads, slot..slot + 1, 0..dim];
            cache.keys = cache.keys.clone().slice_assign(at.clone(), keys.clone().narrow(2, i, 1));
            cache.values = cache.values.clone().slice_assign(at, values.clone().narrow(2, i, 1));
        }
    }

    /// Moves on by `n` tokens once every layer has written them.
    pub fn advance(&mut self, n: usize) {
        self.seen += n;
    }

    /// Layer `layer`'s keys and values of the tokens the next query sees (the slots written so
    /// far, once `write` has stored it: at most the window).
    pub fn visible(&self, layer: usize, through: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let filled = through.min(self.slots);
        let cache = &self.layers[layer];
        (cache.keys.clone().narrow(2, 0, filled), cache.values.clone().narrow(2, 0, filled))
    }
}
