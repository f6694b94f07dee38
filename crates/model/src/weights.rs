//! Named flat tensors in HF naming: what blocks are built from.
//!
//! Loading a checkpoint and gathering a shard both end in a flat buffer per parameter; a block
//! takes the ones it needs by name and reshapes them, checking each length against its shape.

use std::collections::BTreeMap;

use burn::tensor::{Tensor, backend::Backend};

use crate::ParamSpec;

/// A block could not be built from the tensors it was given.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("missing tensor `{0}`")]
    Missing(String),
    #[error("tensor `{name}` has {found} elements, expected shape {shape:?} ({expected} elements)")]
    WrongSize { name: String, shape: Vec<usize>, expected: usize, found: usize },
}

/// Flat tensors by HF name.
#[derive(Debug)]
pub struct Weights<B: Backend> {
    tensors: BTreeMap<String, Tensor<B, 1>>,
}

impl<B: Backend> Default for Weights<B> {
    fn default() -> Self {
        Self { tensors: BTreeMap::new() }
    }
}

impl<B: Backend> Weights<B> {
    pub fn insert(&mut self, name: impl Into<String>, flat: Tensor<B, 1>) {
        self.tensors.insert(name.into(), flat);
    }

    /// Removes `spec.name` and returns it reshaped to `spec.shape` (which must have rank `D`).
    pub fn take<const D: usize>(&mut self, spec: &ParamSpec) -> Result<Tensor<B, D>, WeightsError> {
        assert_eq!(spec.shape.len(), D, "rank of {}", spec.name);
        let flat = self.tensors.remove(&spec.name).ok_or_else(|| WeightsError::Missing(spec.name.clone()))?;
        let found = flat.dims()[0];
        if found != spec.numel() {
            return Err(WeightsError::WrongSize { name: spec.name.clone(), shape: spec.shape.clone(), expected: spec.numel(), found });
        }
        let shape: [usize; D] = spec.shape.as_slice().try_into().expect("rank checked above");
        Ok(shard_kernels::reshape_flat(flat, shape))
    }

    /// Replaces every tensor by `f(name, tensor)`; e.g. to make each a leaf that records its
    /// gradient.
    pub fn map_tensors(self, mut f: impl FnMut(&str, Tensor<B, 1>) -> Tensor<B, 1>) -> Self {
        let tensors = self.tensors.into_iter().map(|(name, t)| {
            let t = f(&name, t);
            (name, t)
        });
        Self { tensors: tensors.collect() }
    }

    /// Names not taken by any block yet.
    pub fn remaining(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}
