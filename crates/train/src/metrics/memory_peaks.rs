//! The run's memory peaks for its summary: every rank's peak resident memory, and on a GPU its
//! device memory, read after each step that trained and kept at its most.

use burn::tensor::backend::Backend;
use shard_comm::Collective;

use crate::metrics::device_memory::{DeviceMemory, DeviceMemoryProbe};
use crate::system::threads::peak_rss_bytes;

pub struct MemoryPeaks {
    device_probe: Option<DeviceMemoryProbe>,
    device_peak: DeviceMemory,
}

/// The peaks of every rank, in rank order.
pub struct RunPeaks {
    pub resident_bytes: Vec<u64>,
    /// On a GPU, each rank's device memory.
    pub device: Option<Vec<DeviceMemory>>,
}

impl MemoryPeaks {
    pub fn new(device_probe: Option<DeviceMemoryProbe>) -> Self {
        Self { device_probe, device_peak: DeviceMemory::default() }
    }

    /// After each step that trained: reads the device's memory (the pool keeps its pages between
    /// steps, so this is close to the step's peak) and keeps each figure's most.
    pub fn after_step(&mut self) {
        if let Some(probe) = &self.device_probe {
            self.device_peak = self.device_peak.max(probe());
        }
    }

    /// This rank's device peak so far; none without a GPU.
    fn device_peak(&self) -> Option<DeviceMemory> {
        self.device_probe.as_ref().map(|_| self.device_peak)
    }

    /// At the end of the run, on every rank (two all-gathers).
    pub fn gather<B: Backend, C: Collective<B>>(&self, comm: &C) -> RunPeaks {
        let resident_bytes = comm.all_gather_scalars(&[peak_rss_bytes() as f64]).iter().map(|&b| b as u64).collect();
        let device =
            self.device_peak().map(|peak| comm.all_gather_scalars(&peak.to_scalars()).chunks(3).map(DeviceMemory::from_scalars).collect());
        RunPeaks { resident_bytes, device }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    #[test]
    fn the_device_is_read_after_each_step_and_its_most_kept() {
        let readings = [(5, 9), (7, 2), (6, 4)];
        let next = Rc::new(Cell::new(0));
        let probe_next = next.clone();
        let probe: DeviceMemoryProbe = Box::new(move || {
            let (pool, device) = readings[probe_next.get()];
            probe_next.set(probe_next.get() + 1);
            DeviceMemory { pool_reserved_bytes: pool, pool_in_use_bytes: pool, device_used_bytes: device }
        });
        let mut peaks = MemoryPeaks::new(Some(probe));
        assert_eq!(peaks.device_peak(), Some(DeviceMemory::default()), "nothing read before a step");
        for _ in readings {
            peaks.after_step();
        }
        assert_eq!(next.get(), 3, "one reading per step");
        assert_eq!(peaks.device_peak(), Some(DeviceMemory { pool_reserved_bytes: 7, pool_in_use_bytes: 7, device_used_bytes: 9 }));
    }

    #[test]
    fn no_device_peak_without_a_probe() {
        let mut peaks = MemoryPeaks::new(None);
        peaks.after_step();
        assert_eq!(peaks.device_peak(), None);
    }
}
