//! What the engine holds, by category, with the peak since the last reset. Every buffer the
//! engine allocates for model states, gathered units, unit gradients and activation checkpoints
//! is counted here when made and released, so that tests and the planner can compare. The
//! totals are the device's: an offloaded optimizer's states are counted apart, as host memory.

/// What a buffer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Compute shards, f32 masters, Adam m and v, gradient shards: alive for the whole run.
    ModelStates,
    /// Unit-sized buffers: a unit's parameters all-gathered to full size, and in backward the
    /// full-size gradients of its trainable parameters (before reduce-scatter).
    Gathered,
    /// Each layer's input, kept from forward to backward.
    Checkpoints,
    /// With `runtime.offload = "optimizer"`: the trained parts' f32 masters, gradient shards and
    /// Adam states, in host memory (not in the totals).
    HostStates,
}

const CATEGORIES: usize = 4;

/// The categories of device memory, which the totals sum.
const DEVICE: [Category; 3] = [Category::ModelStates, Category::Gathered, Category::Checkpoints];

#[derive(Debug, Clone, Default)]
pub struct MemoryLedger {
    current: [u64; CATEGORIES],
    peak_by_category: [u64; CATEGORIES],
    peak_total: u64,
}

impl MemoryLedger {
    pub fn alloc(&mut self, category: Category, bytes: usize) {
        let c = category as usize;
        self.current[c] += bytes as u64;
        self.peak_by_category[c] = self.peak_by_category[c].max(self.current[c]);
        self.peak_total = self.peak_total.max(self.total());
    }

    pub fn free(&mut self, category: Category, bytes: usize) {
        let c = category as usize;
        self.current[c] = self.current[c].checked_sub(bytes as u64).expect("freed more than allocated");
    }

    pub fn current(&self, category: Category) -> u64 {
        self.current[category as usize]
    }

    pub fn peak(&self, category: Category) -> u64 {
        self.peak_by_category[category as usize]
    }

    /// Bytes held on the device now.
    pub fn total(&self) -> u64 {
        DEVICE.iter().map(|&c| self.current[c as usize]).sum()
    }

    /// The most bytes held on the device at once.
    pub fn peak_total(&self) -> u64 {
        self.peak_total
    }

    /// Starts a new measuring window (e.g. one optimizer step) from what is held now.
    pub fn reset_peaks(&mut self) {
        self.peak_by_category = self.current;
        self.peak_total = self.total();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_states_are_not_device_memory() {
        let mut ledger = MemoryLedger::default();
        ledger.alloc(Category::ModelStates, 10);
        ledger.alloc(Category::HostStates, 1000);
        ledger.alloc(Category::Gathered, 5);
        ledger.free(Category::Gathered, 5);
        assert_eq!((ledger.total(), ledger.peak_total()), (10, 15));
        assert_eq!(ledger.current(Category::HostStates), 1000);
    }
}
