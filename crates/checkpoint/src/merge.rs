//! Folding LoRA adapters into their base weights on the host: W += (alpha / r) B A.

use rayon::prelude::*;

/// `w` [out, in] += scale * `b` [out, r] x `a` [r, in], all row-major.
pub fn merge_lora(w: &mut [f32], a: &[f32], b: &[f32], r: usize, scale: f64) {
    let inputs = a.len() / r;
    assert_eq!(w.len() % inputs, 0, "W has `in` columns");
    assert_eq!(b.len(), w.len() / inputs * r, "B is [out, r]");
    w.par_chunks_mut(inputs).zip(b.par_chunks(r)).for_each(|(w_row, b_row)| {
        for (col, w) in w_row.iter_mut().enumerate() {
            let delta: f64 = b_row.iter().enumerate().map(|(k, &bk)| bk as f64 * a[k * inputs + col] as f64).sum();
            *w += (scale * delta) as f32;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_the_scaled_product() {
        // W [2, 3], B [2, 1], A [1, 3]
        let mut w = vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        merge_lora(&mut w, &[1.0, 2.0, 3.0], &[1.0, -1.0], 1, 2.0);
        assert_eq!(w, vec![3.0, 5.0, 7.0, -2.0, -4.0, -6.0]);
    }
}
