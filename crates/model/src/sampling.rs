//! Choosing the next token from the logits: greedy (the first of the largest, as `torch.argmax`),
//! or sampled as transformers' logits processors shape the distribution (temperature, then
//! top-k, then top-p), drawn from a counter-based generator so that a seed gives the same text.

use crate::hash;

#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    Greedy,
    Sample(SampleOptions),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SampleOptions {
    /// Logits are divided by it (> 0).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (ties with the last kept too); `None`: all.
    pub top_k: Option<usize>,
    /// Keep the most likely tokens whose probabilities sum to at least `top_p` (in (0, 1]).
    pub top_p: f32,
    pub seed: u64,
}

impl Sampling {
    /// The token after `logits`, for draw `step` of `stream` (one stream per prompt).
    pub fn choose(&self, logits: &[f32], stream: u64, step: u64) -> u32 {
        match self {
            Sampling::Greedy => argmax(logits),
            Sampling::Sample(options) => options.sample(logits, stream, step),
        }
    }
}

/// The index of the first largest value.
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

impl SampleOptions {
    fn sample(&self, logits: &[f32], stream: u64, step: u64) -> u32 {
        let mut scores: Vec<f32> = logits.iter().map(|&l| l / self.temperature).collect();
        if let Some(k) = self.top_k.filter(|&k| k > 0 && k < scores.len()) {
            let mut sorted = scores.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[k - 1];
            scores.iter_mut().filter(|s| **s < kth).for_each(|s| *s = f32::NEG_INFINITY);
        }
        if self.top_p < 1.0 {
            self.keep_top_p(&mut scores);
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f64> = scores.iter().map(|&s| ((s - max) as f64).exp()).collect();
        let total: f64 = weights.iter().sum();
        let target = hash::uniform(hash::mix(self.seed, stream), step) * total;
        let mut sum = 0.0;
        for (i, w) in weights.iter().enumerate() {
            sum += w;
            if sum > target && *w > 0.0 {
                return i as u32;
            }
        }
        // Rounding left the target past the last sum: the last token that can be drawn.
        weights.iter().rposition(|&w| w > 0.0).expect("at least one token kept") as u32
    }

    /// transformers' TopPLogitsWarper: sorted ascending, tokens whose cumulative probability is at
    /// most 1 - top_p are removed; the most likely token always stays.
    fn keep_top_p(&self, scores: &mut [f32]) {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let max = scores[*order.last().expect("a vocabulary")];
        let exps: Vec<f64> = order.iter().map(|&i| ((scores[i] - max) as f64).exp()).collect();
        let total: f64 = exps.iter().sum();
        let mut cumulative = 0.0;
        for (rank, &i) in order.iter().enumerate().take(order.len() - 1) {
            cumulative += exps[rank] / total;
            if cumulative <= 1.0 - self.top_p as f64 {
                scores[i] = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(top_k: Option<usize>, top_p: f32) -> SampleOptions {
        SampleOptions { temperature: 1.0, top_k, top_p, seed: 7 }
    }

    #[test]
    fn greedy_takes_the_first_largest() {
        assert_eq!(Sampling::Greedy.choose(&[0.5, 2.0, -1.0, 2.0], 0, 0), 1);
    }

    #[test]
    fn top_k_and_top_p_draw_only_the_tokens_they_keep() {
        let logits = [3.0, 2.9, 0.0, -1.0, 2.95];
        for step in 0..200 {
            let k = options(Some(2), 1.0).sample(&logits, 0, step);
            assert!(k == 0 || k == 4, "top-2 drew {k}");
            // Softmax: 0.35, 0.32, 0.02, 0.006, 0.33: top_p 0.5 keeps the two most likely.
            let p = options(None, 0.5).sample(&logits, 0, step);
            assert!(p == 0 || p == 4, "top-p 0.5 drew {p}");
        }
    }

    #[test]
    fn a_seed_and_stream_give_the_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draws = |seed, stream| {
            (0..20).map(|step| SampleOptions { seed, ..options(None, 1.0) }.sample(&logits, stream, step)).collect::<Vec<_>>()
        };
        assert_eq!(draws(1, 0), draws(1, 0));
        assert_ne!(draws(1, 0), draws(2, 0));
        assert_ne!(draws(1, 0), draws(1, 1));
    }
}
