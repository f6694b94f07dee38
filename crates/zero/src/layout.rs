//! The flat layout of a unit: its parameters back to back in HF order, padded to a multiple of
//! the world size so that rank r owns the slice [r*S, (r+1)*S).

use std::ops::Range;

use shard_model::ParamSpec;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatLayout {
    /// Each parameter and the flat offset of its first element.
    pub params: Vec<(ParamSpec, usize)>,
    /// Elements before padding.
    pub numel: usize,
    pub world_size: usize,
}

/// The part of one parameter that falls into a flat range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub param: usize,
    /// First element within the parameter.
    pub start_in_param: usize,
    pub len: usize,
    /// Where it lands within the range.
    pub start_in_range: usize,
}

impl FlatLayout {
    pub fn new(specs: Vec<ParamSpec>, world_size: usize) -> Self {
        let mut offset = 0;
        let params = specs
            .into_iter()
            .map(|spec| {
                let at = offset;
                offset += spec.numel();
                (spec, at)
            })
            .collect();
        Self { params, numel: offset, world_size }
    }

    /// Elements after padding: the smallest multiple of the world size >= numel.
    pub fn padded(&self) -> usize {
        self.numel.div_ceil(self.world_size) * self.world_size
    }

    /// Elements each rank owns.
    pub fn shard_len(&self) -> usize {
        self.padded() / self.world_size
    }

    pub fn shard_range(&self, rank: usize) -> Range<usize> {
        let s = self.shard_len();
        rank * s..(rank + 1) * s
    }

    /// The parameters overlapping `range`, in order; elements of `range` past `numel` are padding.
    pub fn pieces(&self, range: Range<usize>) -> Vec<Piece> {
        self.params
            .iter()
            .enumerate()
            .filter_map(|(i, (spec, at))| {
                let start = range.start.max(*at);
                let end = range.end.min(at + spec.numel());
                (start < end).then(|| Piece { param: i, start_in_param: start - at, len: end - start, start_in_range: start - range.start })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, shape: &[usize]) -> ParamSpec {
        ParamSpec { name: name.into(), shape: shape.to_vec() }
    }

    #[test]
    fn pads_and_slices() {
        let layout = FlatLayout::new(vec![spec("a", &[2, 3]), spec("b", &[5])], 3);
        assert_eq!(layout.numel, 11);
        assert_eq!(layout.padded(), 12);
        assert_eq!(layout.shard_range(1), 4..8);
        let pieces = layout.pieces(layout.shard_range(1));
        assert_eq!(
            pieces,
            vec![
                Piece { param: 0, start_in_param: 4, len: 2, start_in_range: 0 },
                Piece { param: 1, start_in_param: 0, len: 2, start_in_range: 2 },
            ]
        );
        let last = layout.pieces(layout.shard_range(2));
        assert_eq!(last, vec![Piece { param: 1, start_in_param: 2, len: 3, start_in_range: 0 }]);
    }
}
