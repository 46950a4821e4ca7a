//! Learning-rate schedules, evaluated once per optimizer step.

use serde::{Deserialize, Serialize};

/// How the learning rate changes over the run. Every variant is a pure function of
/// (base learning rate, step, total steps), so a resumed run gets the same rates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// The base learning rate throughout.
    #[default]
    Constant,
    /// `torch.optim.lr_scheduler.StepLR` stepped per optimizer step:
    /// `lr = base * gamma^(step / step_size)`.
    Step {
        /// Steps between two decays.
        step_size: usize,
        /// Multiplier applied at each decay.
        gamma: f64,
    },
    /// Linear warm-up from `base/warmup_steps` to `base` over the first `warmup_steps` steps,
    /// then half a cosine from `base` down to `min_lr` at the last step.
    Cosine {
        /// Steps of linear warm-up (0: none).
        warmup_steps: usize,
        /// Learning rate reached at the end of the run.
        min_lr: f64,
    },
    /// `torch.optim.lr_scheduler.OneCycleLR` with cosine annealing (two phases): from
    /// `max_lr/div_factor` up to `max_lr` over the first `pct_start` of the run, then down to
    /// `max_lr/(div_factor*final_div_factor)`.
    OneCycle {
        /// Peak learning rate; `None` uses the configured base learning rate.
        max_lr: Option<f64>,
        /// Fraction of the run spent increasing the rate (PyTorch default 0.3).
        pct_start: f64,
        /// `initial_lr = max_lr / div_factor` (PyTorch default 25).
        div_factor: f64,
        /// `min_lr = initial_lr / final_div_factor` (PyTorch default 1e4).
        final_div_factor: f64,
    },
}

impl Schedule {
    /// A one-cycle schedule with PyTorch's defaults.
    pub fn one_cycle(max_lr: Option<f64>) -> Self {
        Schedule::OneCycle {
            max_lr,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
        }
    }

    /// The learning rate of 0-based optimizer step `step` out of `total_steps`.
    pub fn lr_at(&self, base_lr: f64, step: usize, total_steps: usize) -> f64 {
        match *self {
            Schedule::Constant => base_lr,
            Schedule::Step { step_size, gamma } => {
                let decays = step / step_size.max(1);
                base_lr * gamma.powi(decays.min(i32::MAX as usize) as i32)
            }
            Schedule::Cosine {
                warmup_steps,
                min_lr,
            } => {
                if step < warmup_steps {
                    return base_lr * (step + 1) as f64 / warmup_steps as f64;
                }
                let span = total_steps.saturating_sub(warmup_steps).saturating_sub(1);
                let t = if span == 0 {
                    0.0
                } else {
                    ((step - warmup_steps) as f64 / span as f64).min(1.0)
                };
                min_lr + (base_lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::OneCycle {
                max_lr,
                pct_start,
                div_factor,
                final_div_factor,
            } => {
                let max_lr = max_lr.unwrap_or(base_lr);
                let initial = max_lr / div_factor;
                let min_lr = initial / final_div_factor;
                // PyTorch: phase ends at float(pct_start * total) - 1 and total - 1.
                let end1 = pct_start * total_steps as f64 - 1.0;
                let end2 = total_steps as f64 - 1.0;
                let s = step as f64;
                let anneal = |start: f64, end: f64, pct: f64| {
                    end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
                };
                if s <= end1 {
                    anneal(initial, max_lr, s / end1)
                } else {
                    anneal(max_lr, min_lr, (s - end1) / (end2 - end1))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} != {b}");
    }

    #[test]
    fn constant_and_step() {
        close(Schedule::Constant.lr_at(0.1, 123, 1000), 0.1);
        let s = Schedule::Step {
            step_size: 10,
            gamma: 0.5,
        };
        close(s.lr_at(0.1, 0, 100), 0.1);
        close(s.lr_at(0.1, 9, 100), 0.1);
        close(s.lr_at(0.1, 10, 100), 0.05);
        close(s.lr_at(0.1, 35, 100), 0.0125);
    }

    #[test]
    fn cosine_with_warmup() {
        let s = Schedule::Cosine {
            warmup_steps: 4,
            min_lr: 0.001,
        };
        close(s.lr_at(0.1, 0, 104), 0.025);
        close(s.lr_at(0.1, 3, 104), 0.1);
        close(s.lr_at(0.1, 4, 104), 0.1);
        // Half way through the cosine part: the mean of base and min.
        close(
            s.lr_at(0.1, 4 + 99 / 2, 105),
            0.001 + 0.099 * 0.5 * (1.0 + (std::f64::consts::PI * 49.0 / 100.0).cos()),
        );
        close(s.lr_at(0.1, 54, 105), 0.0505);
        close(s.lr_at(0.1, 103, 104), 0.001);
    }

    /// Values printed by `torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=100)`
    /// follow from its formulas: initial 0.004, peak at step 29, min 4e-7 at step 99.
    #[test]
    fn one_cycle_matches_pytorch_formulas() {
        let s = Schedule::one_cycle(Some(0.1));
        close(s.lr_at(0.5, 0, 100), 0.004);
        close(s.lr_at(0.5, 29, 100), 0.1);
        close(s.lr_at(0.5, 99, 100), 4e-7);
        // Phase 1 midpoint (pct 0.5 of [0, 29]): mean of initial and max.
        let mid = 0.1 + (0.004 - 0.1) / 2.0 * ((std::f64::consts::PI * 10.0 / 29.0).cos() + 1.0);
        close(s.lr_at(0.5, 10, 100), mid);
        // Phase 2, step 64: pct = 35/70 = 0.5 -> (max + min) / 2.
        close(s.lr_at(0.5, 64, 100), (0.1 + 4e-7) / 2.0);
        // max_lr None uses the base rate.
        close(Schedule::one_cycle(None).lr_at(0.2, 29, 100), 0.2);
    }

    #[test]
    fn serde_round_trip() {
        let s = Schedule::Cosine {
            warmup_steps: 3,
            min_lr: 0.0,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"kind":"cosine","warmup_steps":3,"min_lr":0.0}"#);
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), s);
    }
}
