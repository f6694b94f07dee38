//! AdamW's update in one pass over f32 slices: burn-flex's shards in place ([`crate::adamw_step`])
//! or host memory (an offloaded optimizer, [`crate::adamw_step_on_host`]).
//!
//! As tensor ops the update takes fourteen ops, each a pass of its own over memory (burn-flex
//! fuses nothing); here each element is read and written once.

use burn::tensor::backend::Backend;
use rayon::prelude::*;

use crate::flex;
use crate::{AdamWCoefficients, AdamWShards};

/// [`AdamWCoefficients::element`] over burn-flex shards in place, in one pass (in chunks over
/// the rank's threads), zeroing the gradient as it goes.
pub(crate) fn step_in_one_pass<B: Backend>(c: &AdamWCoefficients, shards: AdamWShards<B>) -> AdamWShards<B> {
    let AdamWShards { param, m, v, grad } = shards;
    let mut tensors = [param, m, v, grad].map(flex::into_flex);
    {
        let [p, m, v, g] = tensors.each_mut().map(|t| flex::f32_elements_mut(t).expect("optimizer shards are contiguous f32"));
        step_slices(c, p, m, v, g);
    }
    let [param, m, v, grad] = tensors.map(flex::from_flex);
    AdamWShards { param, m, v, grad }
}

/// [`AdamWCoefficients::element`] over four slices of one length in place, in chunks over the
/// rank's threads, zeroing the gradient as it goes.
pub(crate) fn step_slices(c: &AdamWCoefficients, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &mut [f32]) {
    const CHUNK: usize = 1 << 16;
    assert!(m.len() == p.len() && v.len() == p.len() && g.len() == p.len(), "AdamW's four slices have one length");
    p.par_chunks_mut(CHUNK).zip(m.par_chunks_mut(CHUNK)).zip(v.par_chunks_mut(CHUNK)).zip(g.par_chunks_mut(CHUNK)).for_each(
        |(((p, m), v), g)| {
            for (((p, m), v), g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g.iter_mut()) {
                (*p, *m, *v) = c.element(*p, *m, *v, *g);
                *g = 0.0;
            }
        },
    );
}
