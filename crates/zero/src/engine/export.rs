//! Exports: every unit gathered in turn (the f32 masters of trained parts, a QLoRA layer's NF4
//! projections dequantized) and handed to a sink, the base and the adapters apart.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor};
use shard_checkpoint::CheckpointError;
use shard_comm::Collective;
use shard_model::ParamSpec;

use super::Engine;
use crate::unit::Part;
use crate::{Dtype, Unit};

/// What an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    /// Every base parameter in HF naming; with LoRA, merged: W + (alpha / r) B A.
    Model,
    /// The LoRA adapters only.
    Adapters,
}

impl<B: AutodiffBackend, C: Collective<B::InnerBackend>> Engine<B, C> {
    /// The parameters an export of `kind` writes, in order.
    pub fn export_params(&self, kind: ExportKind) -> Vec<ParamSpec> {
        let exported: Vec<(ParamSpec, usize)> = match kind {
            ExportKind::Model => self.units.iter().flat_map(Unit::base_params).collect(),
            ExportKind::Adapters => self.units.iter().filter_map(Unit::adapters).flat_map(|p| p.layout.params.clone()).collect(),
        };
        exported.into_iter().map(|(s, _)| s).collect()
    }

    /// Gathers the units in turn and hands each, on the ranks that pass a `sink`, to it: the
    /// base for [`ExportKind::Model`] (a QLoRA layer's NF4 projections dequantized in f32, as
    /// bitsandbytes returns them; with the adapters when there are, to merge), the adapters for
    /// [`ExportKind::Adapters`]. Every rank must call this (units are gathered within each shard
    /// group); no rank holds more than one unit at a time.
    pub fn export_units(&self, kind: ExportKind, mut sink: Option<UnitSink>) -> Result<(), CheckpointError> {
        let group = &self.groups.group;
        for unit in &self.units {
            // Exports gather what the rank holds (the f32 master of a trained part), not the
            // compute copy.
            let gather_f32 = |part: &Part<B::InnerBackend>| group.all_gather(part.full_precision_shard()).cast(DType::F32);
            let to_host = |flat: Tensor<B::InnerBackend, 1>| flat.into_data().into_vec::<f32>().expect("f32");
            let adapters = || unit.adapters().map(|p| (p.layout.params.clone(), to_host(gather_f32(p))));
            let (base, adapters) = match kind {
                ExportKind::Model => {
                    let mut flat: Vec<Tensor<B::InnerBackend, 1>> = match &unit.nf4 {
                        Some(nf4) => nf4.dequantize(nf4.start_gather(group).wait(), Dtype::F32).into_iter().map(|(_, t)| t).collect(),
                        None => Vec::new(),
                    };
                    let float = unit.base();
                    flat.push(gather_f32(float).narrow(0, 0, float.layout.numel));
                    (Some((unit.base_params(), to_host(Tensor::cat(flat, 0)))), adapters())
                }
                ExportKind::Adapters if unit.adapters().is_some() => (None, adapters()),
                ExportKind::Adapters => continue,
            };
            if let Some(sink) = sink.as_mut() {
                sink(base, adapters)?;
            }
        }
        Ok(())
    }
}

/// A part gathered to full size on the host: its parameters (with their flat offsets) and values.
pub type FlatPart = (Vec<(ParamSpec, usize)>, Vec<f32>);

/// What receives an exported unit: its base part and its adapters, when the export has them.
pub type UnitSink<'s> = &'s mut dyn FnMut(Option<FlatPart>, Option<FlatPart>) -> Result<(), CheckpointError>;
