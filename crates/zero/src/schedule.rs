//! Learning-rate schedules with the formulas of HF's `get_{constant,linear,cosine}_schedule_with_warmup`.
//! Optimizer step s (counting from 0) uses lr * factor(s), as `LambdaLR` does.

use shard_core::ScheduleKind;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

impl LrSchedule {
    pub fn lr_at(&self, step: u64) -> f64 {
        self.lr * self.factor(step)
    }

    fn factor(&self, step: u64) -> f64 {
        let (s, w, t) = (step as f64, self.warmup_steps as f64, self.total_steps as f64);
        if step < self.warmup_steps {
            return s / w.max(1.0);
        }
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (s - w) / (t - w).max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos())).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_formulas() {
        let s = |kind| LrSchedule { kind, lr: 1.0, warmup_steps: 2, total_steps: 10 };
        let lrs = |kind| (0..11).map(|i| s(kind).lr_at(i)).collect::<Vec<_>>();
        assert_eq!(lrs(ScheduleKind::Constant), vec![0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(lrs(ScheduleKind::Linear)[..4], [0.0, 0.5, 1.0, 0.875]);
        assert_eq!(lrs(ScheduleKind::Linear)[10], 0.0);
        let cosine = lrs(ScheduleKind::Cosine);
        assert!((cosine[6] - 0.5).abs() < 1e-12 && cosine[10].abs() < 1e-12);
    }
}
