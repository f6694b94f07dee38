//! bitsandbytes' `AdamW8bit` at its defaults (its CPU kernels, `_optimizer_update_8bit_blockwise_cpu`
//! and `_optimizer_update_32bit_cpu` in bitsandbytes/backends/cpu/ops.py), on a rank's flat shard:
//! m and v of a parameter of at least [`MIN_8BIT_SIZE`] elements are stored as 8-bit codes of the
//! dynamic maps (signed for m, unsigned for v) with one f32 absmax per block of [`BLOCK`] elements
//! of the parameter; smaller parameters keep f32 m and v.
//!
//! Blocks belong to the Hugging Face tensor, not to the shard: a block that a shard boundary cuts
//! is held in part by two (or more) ranks, which agree on its absmax (a max-reduce of the partial
//! maxima, exact) before requantizing. Every element's arithmetic depends only on its own values
//! and its block's absmax, so the result is the same bits at every world size.
//!
//! Each parameter has "slots", numbered across the part independently of the world size: one per
//! block of an 8-bit parameter (its absmax), one per element of a 32-bit one (its f32 state). A
//! rank holds the contiguous run of slots its shard touches; saves store them as they are, and a
//! resume at another world size reads its run from whichever ranks saved it.

use std::ops::Range;
use std::sync::OnceLock;

use shard_nf4::{ADAMW8BIT_BLOCK, ADAMW8BIT_MIN_SIZE, Blockwise8Encoder, dynamic_map, dynamic_map_unsigned};

use crate::{AdamW, FlatLayout};

/// Elements per block of the 8-bit states (bitsandbytes' optimizer block size).
pub const BLOCK: usize = ADAMW8BIT_BLOCK;
/// Parameters with fewer elements keep 32-bit states (`min_8bit_size`).
pub const MIN_8BIT_SIZE: usize = ADAMW8BIT_MIN_SIZE;

/// `train.optimizer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptimizerKind {
    /// `torch.optim.AdamW`, f32 m and v.
    #[default]
    AdamW,
    /// bitsandbytes' `AdamW8bit`.
    AdamW8bit,
}

impl OptimizerKind {
    /// The name `train.optimizer` and a save's train state give it.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::AdamW8bit => "adamw8bit",
        }
    }
}

/// The two code books and their encoders, built once.
struct Maps {
    signed: [f32; 256],
    unsigned: [f32; 256],
    encode_signed: Blockwise8Encoder,
    encode_unsigned: Blockwise8Encoder,
}

fn maps() -> &'static Maps {
    static MAPS: OnceLock<Maps> = OnceLock::new();
    MAPS.get_or_init(|| {
        let (signed, unsigned) = (dynamic_map(), dynamic_map_unsigned());
        Maps { encode_signed: Blockwise8Encoder::new(&signed), encode_unsigned: Blockwise8Encoder::new(&unsigned), signed, unsigned }
    })
}

/// The slots of a part's parameters (see the module's doc).
#[derive(Debug, Clone)]
pub struct Slots {
    /// Per parameter: its first slot and whether its states are 8-bit.
    params: Vec<(usize, bool)>,
}

impl Slots {
    pub fn new(layout: &FlatLayout) -> Self {
        let mut next = 0;
        let params = layout
            .params
            .iter()
            .map(|(spec, _)| {
                let (numel, eight_bit) = (spec.numel(), spec.numel() >= MIN_8BIT_SIZE);
                let first = next;
                next += if eight_bit { numel.div_ceil(BLOCK) } else { numel };
                (first, eight_bit)
            })
            .collect();
        Self { params }
    }

    /// The slot of element `index` of parameter `param`.
    fn slot(&self, param: usize, index: usize) -> usize {
        let (first, eight_bit) = self.params[param];
        first + if eight_bit { index / BLOCK } else { index }
    }

    /// The slots the flat range `range` of `layout` touches (empty when it is all padding).
    pub fn touched(&self, layout: &FlatLayout, range: Range<usize>) -> Range<usize> {
        let pieces = layout.pieces(range);
        match (pieces.first(), pieces.last()) {
            (Some(first), Some(last)) => {
                self.slot(first.param, first.start_in_param)..self.slot(last.param, last.start_in_param + last.len - 1) + 1
            }
            _ => 0..0,
        }
    }

    /// For each shard boundary (the start of ranks 1..world), the 8-bit block it cuts, if any.
    fn cut_blocks(&self, layout: &FlatLayout) -> Vec<Option<usize>> {
        (1..layout.world_size)
            .map(|r| {
                let at = r * layout.shard_len();
                let before = layout.pieces(at.saturating_sub(1)..at).pop()?;
                let after = layout.pieces(at..at + 1).pop()?;
                let cut = before.param == after.param && self.params[after.param].1 && after.start_in_param % BLOCK != 0;
                cut.then(|| self.slot(after.param, after.start_in_param))
            })
            .collect()
    }
}

/// A rank's AdamW8bit state of one part's shard.
#[derive(Debug, Clone)]
pub struct Blockwise8State {
    /// The slots the shard touches.
    pub slots: Range<usize>,
    /// Codes of m and v, one per element of the shard (0 for the elements of 32-bit parameters
    /// and for padding).
    pub m_codes: Vec<u8>,
    pub v_codes: Vec<u8>,
    /// Per slot of `slots`: a block's absmax, or a 32-bit parameter's element's state.
    pub m_scales: Vec<f32>,
    pub v_scales: Vec<f32>,
}

/// The scalars of one step, as bitsandbytes' kernels use them (Python floats, cast to f32 by torch).
struct Step {
    clip: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    decay: Option<f32>,
    // The 8-bit kernel: p += (-lr / c1) * m / (sqrt(v) / c2 + eps).
    correction2: f32,
    eps: f32,
    neg_lr_over_c1: f32,
    // The 32-bit kernel: p += (-lr * c2 / c1) * (m / (sqrt(v) + eps * c2)).
    eps_times_c2: f32,
    step_size: f32,
}

impl Step {
    fn new(adamw: &AdamW, step: u64, lr: f64, clip: Option<f32>) -> Self {
        let [beta1, beta2] = adamw.betas;
        let correction1 = 1.0 - beta1.powi(step as i32);
        let correction2 = (1.0 - beta2.powi(step as i32)).sqrt();
        Self {
            clip: clip.unwrap_or(1.0),
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            decay: (adamw.weight_decay > 0.0).then_some((1.0 - lr * adamw.weight_decay) as f32),
            correction2: correction2 as f32,
            eps: adamw.eps as f32,
            neg_lr_over_c1: (-lr / correction1) as f32,
            eps_times_c2: (adamw.eps * correction2) as f32,
            step_size: (-lr * correction2 / correction1) as f32,
        }
    }

    /// m and v after the gradient `g` (clipped here): `mul_(beta1).add_(g, alpha=1-beta1)` (torch's
    /// vectorised add with alpha is one fused multiply-add), `mul_(beta2).addcmul_(g, g, value=1-beta2)`.
    #[inline(always)]
    fn moments(&self, m: f32, v: f32, g: f32) -> (f32, f32) {
        let g = g * self.clip;
        (g.mul_add(self.one_minus_beta1, m * self.beta1), v * self.beta2 + self.one_minus_beta2 * g * g)
    }

    #[inline(always)]
    fn decayed(&self, p: f32) -> f32 {
        self.decay.map_or(p, |d| p * d)
    }

    /// The 8-bit kernel's parameter update.
    #[inline(always)]
    fn param_8bit(&self, p: f32, m: f32, v: f32) -> f32 {
        let denom = v.sqrt() / self.correction2 + self.eps;
        self.decayed(p) + self.neg_lr_over_c1 * m / denom
    }

    /// The 32-bit kernel's parameter update (`p.add_(update, alpha=step_size)`: a fused multiply-add).
    #[inline(always)]
    fn param_32bit(&self, p: f32, m: f32, v: f32) -> f32 {
        let update = m / (v.sqrt() + self.eps_times_c2);
        update.mul_add(self.step_size, self.decayed(p))
    }
}

impl Blockwise8State {
    /// Zero states for rank `rank`'s shard of `layout`.
    pub fn zeros(layout: &FlatLayout, rank: usize) -> Self {
        let slots = Slots::new(layout).touched(layout, layout.shard_range(rank));
        let len = layout.shard_len();
        Self { m_codes: vec![0; len], v_codes: vec![0; len], m_scales: vec![0.0; slots.len()], v_scales: vec![0.0; slots.len()], slots }
    }

    /// Bytes held: the codes, and the scales (f32).
    pub fn bytes(&self) -> usize {
        self.m_codes.len() + self.v_codes.len() + 4 * (self.m_scales.len() + self.v_scales.len())
    }

    /// One AdamW8bit step of rank `rank`'s shard `params` (f32 master) with its gradient `grads`
    /// (scaled first by the clipping factor `clip`); `step` counts from 1. `max_over_group`
    /// replaces each value of a slice by its maximum over the ranks of the shard group (every
    /// rank of a group of two or more calls it once per part). A block is requantized as soon as
    /// it is updated, except a block cut by a shard boundary, which waits for the agreement on
    /// its absmax: no temporaries of the shard's size.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        layout: &FlatLayout,
        rank: usize,
        adamw: &AdamW,
        step: u64,
        lr: f64,
        clip: Option<f32>,
        params: &mut [f32],
        grads: &[f32],
        max_over_group: &mut dyn FnMut(&mut [f64]),
    ) {
        let (c, slots) = (Step::new(adamw, step, lr, clip), Slots::new(layout));
        let mut cut = Vec::new();
        for piece in layout.pieces(layout.shard_range(rank)) {
            let numel = layout.params[piece.param].0.numel();
            let (start, end) = (piece.start_in_param, piece.start_in_param + piece.len);
            let at_shard = |index: usize| piece.start_in_range + index - start;
            if !slots.params[piece.param].1 {
                for index in start..end {
                    let (i, s) = (at_shard(index), slots.slot(piece.param, index) - self.slots.start);
                    let (m, v) = c.moments(self.m_scales[s], self.v_scales[s], grads[i]);
                    params[i] = c.param_32bit(params[i], m, v);
                    (self.m_scales[s], self.v_scales[s]) = (m, v);
                }
                continue;
            }
            let mut index = start;
            while index < end {
                let block_start = index / BLOCK * BLOCK;
                let held = index..end.min(block_start + BLOCK);
                let block = self.update_block(&c, slots.slot(piece.param, index), at_shard(held.start)..at_shard(held.end), params, grads);
                if held == (block_start..numel.min(block_start + BLOCK)) {
                    self.requantize(&block);
                } else {
                    cut.push(block); // its absmax is agreed on below
                }
                index = held.end;
            }
        }
        self.agree_on_cut_blocks(&slots.cut_blocks(layout), &mut cut, max_over_group);
        for block in &cut {
            self.requantize(block);
        }
    }

    /// m, v and the parameters of the shard elements `range` of one 8-bit block (slot `slot`).
    fn update_block(&self, c: &Step, slot: usize, range: Range<usize>, params: &mut [f32], grads: &[f32]) -> Block {
        let maps = maps();
        let s = slot - self.slots.start;
        let mut block = Block {
            slot,
            range: range.clone(),
            m: Vec::with_capacity(range.len()),
            v: Vec::with_capacity(range.len()),
            m_max: 0.0,
            v_max: 0.0,
        };
        for i in range {
            let m = maps.signed[self.m_codes[i] as usize] * self.m_scales[s];
            let v = maps.unsigned[self.v_codes[i] as usize] * self.v_scales[s];
            let (m, v) = c.moments(m, v, grads[i]);
            params[i] = c.param_8bit(params[i], m, v);
            block.m_max = block.m_max.max(m.abs());
            block.v_max = block.v_max.max(v.abs());
            block.m.push(m);
            block.v.push(v);
        }
        block
    }

    /// Codes and absmaxes of `block`'s updated m and v.
    fn requantize(&mut self, block: &Block) {
        let maps = maps();
        for (k, i) in block.range.clone().enumerate() {
            self.m_codes[i] = maps.encode_signed.encode(block.m[k], block.m_max);
            self.v_codes[i] = maps.encode_unsigned.encode(block.v[k], block.v_max);
        }
        let s = block.slot - self.slots.start;
        (self.m_scales[s], self.v_scales[s]) = (block.m_max, block.v_max);
    }

    /// The absmax of each block cut by a shard boundary: the maximum of every holder's partial
    /// maximum. Each rank puts its partial maxima of the cut blocks it holds (0 elsewhere) in one
    /// vector, with a place per boundary, reduced by max.
    fn agree_on_cut_blocks(&self, boundaries: &[Option<usize>], cut: &mut [Block], max_over_group: &mut dyn FnMut(&mut [f64])) {
        if boundaries.is_empty() {
            return;
        }
        // Which of our cut blocks each boundary cuts, if we hold part of it.
        let held: Vec<Option<usize>> = boundaries.iter().map(|slot| slot.and_then(|s| cut.iter().position(|b| b.slot == s))).collect();
        let mut partial: Vec<f64> =
            held.iter().flat_map(|b| b.map_or([0.0, 0.0], |b| [cut[b].m_max.into(), cut[b].v_max.into()])).collect();
        max_over_group(&mut partial);
        for (b, reduced) in held.iter().zip(partial.chunks_exact(2)) {
            if let Some(b) = b {
                (cut[*b].m_max, cut[*b].v_max) = (reduced[0] as f32, reduced[1] as f32);
            }
        }
    }
}

/// One 8-bit block's part in this shard after its update, before requantizing.
struct Block {
    slot: usize,
    /// Its elements in the shard.
    range: Range<usize>,
    m: Vec<f32>,
    v: Vec<f32>,
    m_max: f32,
    v_max: f32,
}

#[cfg(test)]
mod tests {
    use shard_model::ParamSpec;

    use super::*;

    fn layout(world: usize) -> FlatLayout {
        let spec = |name: &str, shape: &[usize]| ParamSpec { name: name.into(), shape: shape.to_vec() };
        // An 8-bit parameter with a short last block, a 32-bit one, another 8-bit one.
        FlatLayout::new(vec![spec("a", &[17, 300]), spec("norm", &[70]), spec("b", &[4096])], world)
    }

    fn values(len: usize, seed: u32, scale: f32) -> Vec<f32> {
        (0..len as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 20011) as f32 / 20011.0 * scale - scale / 2.0).collect()
    }

    /// Runs `steps` steps of every rank of a world of `world` (ranks in turn, the max-reduce
    /// between their two halves played by hand) and returns the full flat parameters.
    fn train(world: usize, steps: u64) -> Vec<f32> {
        let layout = layout(world);
        let adamw = AdamW { betas: [0.9, 0.95], eps: 1e-8, weight_decay: 0.1 };
        let full = values(layout.padded(), 3, 2.0);
        let mut params: Vec<Vec<f32>> = (0..world).map(|r| full[layout.shard_range(r)].to_vec()).collect();
        let mut states: Vec<Blockwise8State> = (0..world).map(|r| Blockwise8State::zeros(&layout, r)).collect();
        for step in 1..=steps {
            let grads = values(layout.padded(), step as u32, 1e-2);
            // First every rank's partial maxima, then the reduced ones: run each rank twice,
            // the first time on copies, collecting what it contributes.
            let mut reduced: Option<Vec<f64>> = None;
            for r in 0..world {
                let (mut p, mut s) = (params[r].clone(), states[r].clone());
                s.update(&layout, r, &adamw, step, 1e-2, Some(0.5), &mut p, &grads[layout.shard_range(r)], &mut |v: &mut [f64]| {
                    let acc = reduced.get_or_insert_with(|| vec![0.0; v.len()]);
                    acc.iter_mut().zip(v.iter()).for_each(|(a, b)| *a = a.max(*b));
                });
            }
            for r in 0..world {
                let all = reduced.clone().unwrap_or_default();
                states[r].update(&layout, r, &adamw, step, 1e-2, Some(0.5), &mut params[r], &grads[layout.shard_range(r)], &mut |v| {
                    v.copy_from_slice(&all)
                });
            }
        }
        params.concat()[..layout.numel].to_vec()
    }

    #[test]
    fn slots_number_blocks_of_large_parameters_and_elements_of_small_ones() {
        let layout = layout(1);
        let slots = Slots::new(&layout);
        // a: 5100 elements, 20 blocks; norm: 70 elements; b: 16 blocks.
        assert_eq!(slots.touched(&layout, 0..layout.numel), 0..(20 + 70 + 16));
        assert_eq!(slots.touched(&layout, 256..512), 1..2);
        assert_eq!(slots.touched(&layout, 5100..5101), 20..21);
    }

    #[test]
    fn boundaries_inside_a_block_cut_it() {
        let layout = layout(3); // 9266 elements, 3089 a rank: both boundaries cut a block.
        let cut = Slots::new(&layout).cut_blocks(&layout);
        assert_eq!(cut, vec![Some(3089 / 256), Some(20 + 70 + (2 * 3089 - 5170) / 256)]);
    }

    #[test]
    fn every_world_size_gives_the_same_bits() {
        let one = train(1, 3);
        for world in [2, 3, 5] {
            let other = train(world, 3);
            assert!(one.iter().zip(&other).all(|(a, b)| a.to_bits() == b.to_bits()), "world {world} differs from world 1");
        }
    }

    /// A rank holding parts of two cut blocks offers its partial maxima of both to the max-reduce.
    #[test]
    fn a_rank_offers_its_partial_maxima_of_cut_blocks() {
        let layout = layout(3);
        let adamw = AdamW { betas: [0.9, 0.95], eps: 1e-8, weight_decay: 0.1 };
        let mut p = values(layout.shard_len(), 1, 2.0);
        let mut state = Blockwise8State::zeros(&layout, 1);
        let grads = values(layout.shard_len(), 2, 1e-2);
        let mut saw = Vec::new();
        state.update(&layout, 1, &adamw, 1, 1e-2, None, &mut p, &grads, &mut |v| saw = v.to_vec());
        assert_eq!(saw.len(), 4, "two boundaries, m and v each");
        assert!(saw.iter().all(|v| *v > 0.0), "rank 1 holds part of both cut blocks: {saw:?}");
    }
}
