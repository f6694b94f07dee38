//! Bin packing of whole examples into rows of at most `seq_len` tokens: first-fit decreasing.
//!
//! Examples are taken longest first (ties in file order) and each goes into the first row that
//! still has room for it, a new row when none has. The result depends on the lengths alone, so
//! every rank computes the same rows; the sampler's seeded shuffle then orders them. A segment
//! tree over the rows' free space finds the first row with room in O(log rows), so a million
//! examples pack in well under a second.

/// Which examples (indices into `lengths`, ascending within a row) each row holds.
pub fn first_fit_decreasing(lengths: &[u32], capacity: u32) -> Vec<Vec<u32>> {
    assert!(lengths.iter().all(|&n| n <= capacity), "examples are truncated to seq_len before packing");
    let mut order: Vec<u32> = (0..lengths.len() as u32).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i as usize])); // stable: ties in file order
    let mut free = FreeSpace::new(lengths.len(), capacity);
    let mut rows: Vec<Vec<u32>> = Vec::new();
    for i in order {
        let row = free.take_first_fit(lengths[i as usize]);
        if row == rows.len() {
            rows.push(Vec::new());
        }
        rows[row].push(i);
    }
    rows.iter_mut().for_each(|row| row.sort_unstable());
    rows
}

/// The free space of `n` rows (all `capacity` at first) in a max segment tree.
struct FreeSpace {
    /// Leaves at `leaves..2 * leaves`; each inner node holds the larger of its two children.
    tree: Vec<u32>,
    leaves: usize,
}

impl FreeSpace {
    fn new(n: usize, capacity: u32) -> Self {
        let leaves = n.max(1).next_power_of_two();
        Self { tree: vec![capacity; 2 * leaves], leaves }
    }

    /// The first row with at least `len` free, which loses `len`. Rows are opened in order, so
    /// the first one with room is an open row, or else the next unopened one.
    fn take_first_fit(&mut self, len: u32) -> usize {
        let mut node = 1;
        while node < self.leaves {
            node = if self.tree[2 * node] >= len { 2 * node } else { 2 * node + 1 };
        }
        self.tree[node] -= len;
        let row = node - self.leaves;
        while node > 1 {
            node /= 2;
            self.tree[node] = self.tree[2 * node].max(self.tree[2 * node + 1]);
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// First-fit decreasing as textbooks write it: every open row tried in order.
    fn plain_ffd_rows(lengths: &[u32], capacity: u32) -> usize {
        let mut sorted = lengths.to_vec();
        sorted.sort_by(|a, b| b.cmp(a));
        let mut used: Vec<u32> = Vec::new();
        for n in sorted {
            match used.iter_mut().find(|u| **u + n <= capacity) {
                Some(u) => *u += n,
                None => used.push(n),
            }
        }
        used.len()
    }

    /// Lengths like an instruction dataset's: mostly short, a long tail up to `capacity`.
    fn sample(rng: &mut ChaCha8Rng, n: usize, capacity: u32) -> Vec<u32> {
        (0..n).map(|_| ((rng.random::<f64>().powi(3) * capacity as f64) as u32).clamp(1, capacity)).collect()
    }

    #[test]
    fn whole_examples_fill_rows_at_least_as_well_as_first_fit_decreasing() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (n, capacity) in [(1, 8), (7, 20), (500, 64), (5000, 2048)] {
            let lengths = sample(&mut rng, n, capacity);
            let rows = first_fit_decreasing(&lengths, capacity);
            let mut seen: Vec<u32> = rows.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n as u32).collect::<Vec<_>>(), "every example in exactly one row, whole");
            for row in &rows {
                assert!(!row.is_empty());
                assert!(row.iter().map(|&i| lengths[i as usize]).sum::<u32>() <= capacity, "a row over seq_len");
            }
            assert!(rows.len() <= plain_ffd_rows(&lengths, capacity), "{n} examples: fuller rows than first-fit decreasing's");
            assert_eq!(rows, first_fit_decreasing(&lengths, capacity), "deterministic");
        }
    }

    #[test]
    fn the_first_row_with_room_takes_the_example() {
        // Longest first: 6 opens row 0, 5 row 1, 4 row 2; 3 fits row 1 (3 free), 2 row 0, 1 row 2.
        let rows = first_fit_decreasing(&[3, 6, 2, 5, 1, 4], 8);
        assert_eq!(rows, vec![vec![1, 2], vec![0, 3], vec![4, 5]]);
    }
}
