//! Model selection, as a [`Hook`] at the end of each epoch: `model_best.safetensors` keeps the
//! weights of the epoch with the best selection accuracy (the earliest on ties), and
//! `early_stop: N` ends the run after N epochs without a better one, saying why. The
//! selection accuracy is the validation split's when the run holds one out (`val_split`),
//! else the test split's, and the log says which.
//!
//! Everything is computed from the epochs' records, so a resumed run selects as the
//! uninterrupted one would.

use crate::atomic;
use crate::checkpoint::{MODEL_BEST_FILE, MODEL_FILE};
use crate::error::{Result, TrainError};
use crate::report::EpochRecord;
use crate::trainer::{EpochEnd, Flow, Hook};

/// The accuracy selection uses: validation when the epoch measured it, else test.
pub fn selection_accuracy(r: &EpochRecord) -> Option<f64> {
    r.val_acc.or(r.test_acc)
}

/// The best epoch so far: its 1-based number and selection accuracy.
pub fn best_epoch(records: &[EpochRecord]) -> Option<(usize, f64)> {
    records
        .iter()
        .filter_map(|r| selection_accuracy(r).map(|a| (r.epoch, a)))
        .fold(None, |best, (e, a)| match best {
            Some((_, b)) if b >= a => best,
            _ => Some((e, a)),
        })
}

/// The selection hook of a run.
#[derive(Debug, Clone)]
pub struct Selection {
    early_stop: Option<usize>,
}

impl Selection {
    /// Keeps the best weights; stops after `early_stop` epochs without improvement.
    pub fn new(early_stop: Option<usize>) -> Self {
        Selection { early_stop }
    }
}

impl Hook for Selection {
    fn after_epoch(&mut self, end: &EpochEnd) -> Result<Flow> {
        let Some((best, accuracy)) = best_epoch(end.records) else {
            return Ok(Flow::Continue);
        };
        if best == end.record.epoch {
            let from = end.checkpoint.join(MODEL_FILE);
            let bytes = std::fs::read(&from).map_err(|e| TrainError::io(&from, e))?;
            atomic::write_bytes(&end.checkpoint.join(MODEL_BEST_FILE), &bytes)?;
        }
        let since = end.record.epoch - best;
        match self.early_stop {
            Some(patience) if since >= patience => {
                let split = if end.records.iter().any(|r| r.val_acc.is_some()) {
                    "validation"
                } else {
                    "test"
                };
                log::info!(
                    "early stop after epoch {}: no better {split} accuracy for {since} epochs \
                     (best {:.2}% at epoch {best}, kept in {MODEL_BEST_FILE}); selection uses \
                     the {split} split{}",
                    end.record.epoch,
                    100.0 * accuracy,
                    if split == "test" {
                        ", as the run has no validation split (--val-split)"
                    } else {
                        ""
                    }
                );
                Ok(Flow::Stop)
            }
            _ => Ok(Flow::Continue),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, test_acc: Option<f64>) -> EpochRecord {
        EpochRecord {
            epoch,
            lr: 0.1,
            train_loss: 1.0,
            train_acc: 0.5,
            test_loss: test_acc.map(|_| 1.0),
            test_acc,
            test_top5: test_acc,
            val_loss: None,
            val_acc: None,
            seconds: 1.0,
            images_per_s: 1.0,
        }
    }

    #[test]
    fn the_best_is_the_earliest_highest_evaluated_epoch() {
        assert_eq!(best_epoch(&[]), None);
        assert_eq!(best_epoch(&[record(1, None)]), None);
        let r = [
            record(1, Some(0.5)),
            record(2, Some(0.7)),
            record(3, None),
            record(4, Some(0.7)),
            record(5, Some(0.6)),
        ];
        assert_eq!(best_epoch(&r), Some((2, 0.7)));
        // Validation accuracy, when measured, decides over test accuracy.
        let mut v = r.to_vec();
        v[4].val_acc = Some(0.9);
        assert_eq!(best_epoch(&v), Some((5, 0.9)));
    }
}
