//! Activation sizes from the shapes of one micro-batch: the layer checkpoints, what the
//! recompute of one layer keeps for its backward, and the logits with the loss tensors.
//!
//! The counts follow the model code (crates/model: the fused attention, or the eager one with
//! GQA `repeat_kv`; SwiGLU, RMSNorm, `cross_entropy_sum`) under burn's autodiff, which keeps the
//! inputs of each op that its backward needs. Reshapes, slices and transposes are views on both backends
//! (burn-flex, burn-cuda). In bf16 the model's upcasts keep f32 copies: RMSNorm's input and
//! SiLU's input and sigmoid.

use crate::Job;

/// The sizes that activations are made of, for one micro-batch on one rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shapes {
    /// Sequences and tokens per sequence.
    pub batch: u64,
    pub seq: u64,
    pub hidden: u64,
    /// Query width (heads x head_dim) and key/value width (kv heads x head_dim).
    pub q_width: u64,
    pub kv_width: u64,
    pub intermediate: u64,
    pub heads: u64,
    pub vocab: u64,
    /// Bytes of an element in the compute dtype.
    pub elem: u64,
    pub fused_attention: bool,
}

impl Shapes {
    pub fn new(job: &Job) -> Self {
        let m = &job.model;
        Self {
            batch: job.micro_batch as u64,
            seq: job.seq_len as u64,
            hidden: m.hidden_size as u64,
            q_width: (m.num_attention_heads * m.head_dim) as u64,
            kv_width: (m.num_key_value_heads * m.head_dim) as u64,
            intermediate: m.intermediate_size as u64,
            heads: m.num_attention_heads as u64,
            vocab: m.vocab_size as u64,
            elem: job.precision.bytes() as u64,
            fused_attention: job.assumptions.fused_attention,
        }
    }

    fn tokens(&self) -> u64 {
        self.batch * self.seq
    }

    /// A [batch, seq, width] tensor in the compute dtype.
    fn tokens_by(&self, width: u64) -> u64 {
        self.tokens() * width * self.elem
    }

    /// One layer's input, kept from forward to backward (the engine's checkpoint; also the size
    /// of the hidden state and its gradient passed between units).
    pub fn hidden_state(&self) -> u64 {
        self.tokens_by(self.hidden)
    }

    /// Elements of the [batch, heads, seq, seq] attention scores; 0 with fused attention.
    fn score_elems(&self) -> u64 {
        if self.fused_attention { 0 } else { self.batch * self.heads * self.seq * self.seq }
    }

    /// Attention's masks and RoPE tables, made on the device from where each row's examples
    /// start: [seq, head_dim] cos and sin, and for eager attention a [seq, seq] bias, per row
    /// layout (one shared when every row has the same starts; counted here per row, as packed
    /// rows have), in the compute dtype, for the forward and again for the recompute.
    pub fn attention_masks(&self) -> u64 {
        let head_dim = self.q_width / self.heads;
        let bias = if self.fused_attention { 0 } else { self.seq * self.seq };
        2 * self.batch * (bias + 2 * self.seq * head_dim) * self.elem
    }

    /// Elements of the f32 log-sum-exp per query and head that the fused attention keeps for its
    /// backward (and the backward's rowsum(dO * O) of the same size); 0 for eager attention.
    fn row_stats(&self) -> u64 {
        if self.fused_attention { self.batch * self.heads * self.seq } else { 0 }
    }

    /// Attention's q, k and v: repeated to every head for eager attention, k and v at their kv
    /// width for the fused one.
    fn attention_inputs(&self) -> u64 {
        let kv_width = if self.fused_attention { self.kv_width } else { self.q_width };
        self.tokens_by(self.q_width) + 2 * self.tokens_by(kv_width)
    }

    /// What one decoder layer's forward without autodiff holds at its peak, besides its input:
    /// the output and a normed copy, then either the attention (q, k and v; eager: the scores and
    /// probabilities in f32; fused: the output and the log-sum-exp) or the MLP (gate, up and
    /// their product); and the attention masks.
    pub fn layer_forward(&self) -> u64 {
        let fused_output = if self.fused_attention { self.tokens_by(self.q_width) } else { 0 };
        let attention = self.attention_inputs() + self.score_elems() * 8 + fused_output + self.row_stats() * 4;
        let mlp = 3 * self.tokens_by(self.intermediate);
        2 * self.hidden_state() + attention.max(mlp) + self.attention_masks()
    }

    /// What the recompute of one layer keeps for its backward, plus the largest gradients in
    /// flight while it runs backward:
    /// - [tokens, hidden]: both norms' normalised inputs, the residual sum and the input each
    ///   norm's projections share (5); in bf16 also both norms' f32 inputs;
    /// - [tokens, q width]: q before and after RoPE, its rotated half and the attention output
    ///   (4); k and v (at q width repeated to every head for eager attention, at kv width for the
    ///   fused one); [tokens, kv width]: k before RoPE and rotated (2);
    /// - eager: the scores after exp (f32, softmax) and the probabilities (compute dtype); fused:
    ///   the f32 log-sum-exp and rowsum(dO * O) per query and head;
    /// - [tokens, intermediate]: gate, sigmoid(gate), silu(gate), up and their product (5); in
    ///   bf16 also the f32 gate and sigmoid of SiLU's upcast;
    /// - in flight: two [tokens, intermediate] gradients, or in attention's backward two f32
    ///   score-sized ones, whichever is larger;
    /// - the attention masks.
    pub fn layer_recompute(&self) -> u64 {
        let upcasts = if self.elem == 4 { 0 } else { 2 * self.tokens() * (self.hidden + self.intermediate) * 4 };
        let saved = 5 * self.hidden_state()
            + upcasts
            + 4 * self.tokens_by(self.q_width)
            + (self.attention_inputs() - self.tokens_by(self.q_width))
            + 2 * self.tokens_by(self.kv_width)
            + self.score_elems() * (4 + self.elem)
            + 2 * self.row_stats() * 4
            + 5 * self.tokens_by(self.intermediate);
        let in_flight = (2 * self.tokens_by(self.intermediate)).max(2 * self.score_elems() * 4);
        saved + in_flight + self.attention_masks()
    }

    /// The head's forward before the loss: the lm_head output [batch, seq, vocab] in the compute
    /// dtype.
    pub fn logits_forward(&self) -> u64 {
        self.tokens_by(self.vocab)
    }

    /// The loss and its backward: the logits plus two f32 [batch, seq - 1, vocab] tensors at
    /// once (the shifted logits and exp, then the gradients of the log-softmax).
    pub fn logits_loss(&self) -> u64 {
        self.tokens_by(self.vocab) + 2 * self.batch * (self.seq - 1) * self.vocab * 4
    }

    /// The lm_head's backward on the CPU in bf16: burn-flex multiplies bf16 matrices through f32
    /// copies of both operands and of the product (burn-flex 0.21's `matmul_bf16`), so the
    /// gradient of the logits is held in bf16 and in f32 beside the weight and its gradient in f32.
    pub fn cpu_bf16_lm_head_backward(&self) -> u64 {
        let (grad_logits, weight) = (self.tokens() * self.vocab, self.vocab * self.hidden);
        grad_logits * self.elem + (grad_logits + 2 * weight) * 4
    }
}
