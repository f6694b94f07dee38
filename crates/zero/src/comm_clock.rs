//! The time a rank's device sits idle waiting for communication: the exposed communication
//! that the prefetched gathers and the reduce-scatters in flight did not hide behind compute.
//!
//! On CPU the compute is synchronous, so the time the host waits for a collective is that time.
//! On GPU the host runs ahead of the device: it may wait for a collective while the device still
//! computes what was queued, which is not exposed. So each wait first lets the device finish its
//! queued compute (`Backend::sync`, which does nothing on burn-flex), and only then is timed.

use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;

/// The exposed communication of the device `B` computes on.
pub struct CommClock<B: Backend> {
    device: B::Device,
    exposed: Duration,
}

impl<B: Backend> CommClock<B> {
    pub fn new(device: B::Device) -> Self {
        Self { device, exposed: Duration::ZERO }
    }

    /// Runs `wait` (a collective, or the wait for one started earlier) after the device's
    /// queued compute, and counts its time as exposed.
    pub fn wait<T>(&mut self, wait: impl FnOnce() -> T) -> T {
        B::sync(&self.device).unwrap_or_else(|e| panic!("the device failed while computing: {e}"));
        let started = Instant::now();
        let out = wait();
        self.exposed += started.elapsed();
        out
    }

    /// The exposed communication since the last `restart`, which this starts again from zero.
    pub fn restart(&mut self) -> Duration {
        std::mem::take(&mut self.exposed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn waits_add_up_until_restarted() {
        let mut clock = CommClock::<Flex>::new(Default::default());
        let got = clock.wait(|| {
            std::thread::sleep(Duration::from_millis(20));
            7
        });
        assert_eq!(got, 7);
        clock.wait(|| std::thread::sleep(Duration::from_millis(10)));
        let exposed = clock.restart();
        assert!(exposed >= Duration::from_millis(30), "{exposed:?}");
        assert_eq!(clock.restart(), Duration::ZERO);
    }
}
