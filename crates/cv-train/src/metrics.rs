//! Top-1 / top-k accuracy, per-class accuracy and the confusion matrix, accumulated over
//! batches; [`EvalReport`] is exactly the JSON `cv eval --json` prints. [`Evaluation`] adds
//! what each image got ([`SampleOutcome`]), which the run report ranks by loss.

use candle_core::{DType, Tensor};
use cv_models::ModelError;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::loss::cross_entropy;

/// Accuracy of one class on the evaluated split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    /// Class name.
    pub class: String,
    /// Fraction of this class's images predicted correctly (0 when it has none).
    pub accuracy: f64,
    /// Number of images of this class.
    pub count: u64,
}

/// Result of evaluating a model on a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Number of images evaluated.
    pub images: u64,
    /// Mean cross-entropy (no label smoothing).
    pub loss: f64,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// Top-5 accuracy (top-k with k clipped to the number of classes).
    pub top5: f64,
    /// Accuracy per class, in class-index order.
    pub per_class: Vec<ClassAccuracy>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// What the model made of one evaluated image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOutcome {
    /// Index of the image in the evaluated dataset.
    pub index: usize,
    /// Its true class.
    pub label: u32,
    /// The top-1 class.
    pub predicted: u32,
    /// Softmax probability of the top-1 class.
    pub probability: f32,
    /// Cross-entropy of the true class (no label smoothing).
    pub loss: f32,
}

/// An [`EvalReport`] with the outcome of every image, in evaluation order.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The aggregate metrics.
    pub report: EvalReport,
    /// One outcome per image.
    pub samples: Vec<SampleOutcome>,
}

impl Evaluation {
    /// The `k` images with the highest loss, highest first (ties: lower index first).
    pub fn top_losses(&self, k: usize) -> Vec<SampleOutcome> {
        let mut ranked = self.samples.clone();
        ranked.sort_by(|a, b| b.loss.total_cmp(&a.loss).then(a.index.cmp(&b.index)));
        ranked.truncate(k);
        ranked
    }
}

/// Softmax probability of `top` and cross-entropy of `label`, from one row of logits
/// (log-sum-exp shifted by the maximum, so large logits do not overflow).
fn softmax_outcome(row: &[f32], label: usize, top: usize) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = row.iter().map(|&v| (v - max).exp()).sum::<f32>().ln() + max;
    ((row[top] - log_sum).exp(), log_sum - row[label])
}

/// A pair of classes the model mixes up: `count` images of `actual` predicted as `predicted`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusedPair {
    /// The true class.
    pub actual: usize,
    /// The class predicted instead.
    pub predicted: usize,
    /// How many images of `actual` went to `predicted`.
    pub count: u64,
}

impl EvalReport {
    /// The `n` largest off-diagonal cells of the confusion matrix, largest first (ties in
    /// row-major order), zero cells left out: fastai's `most_confused(min_val=1)`.
    pub fn most_confused(&self, n: usize) -> Vec<ConfusedPair> {
        let mut pairs: Vec<ConfusedPair> = self
            .confusion
            .iter()
            .enumerate()
            .flat_map(|(actual, row)| {
                row.iter()
                    .enumerate()
                    .filter(move |&(predicted, &count)| predicted != actual && count > 0)
                    .map(move |(predicted, &count)| ConfusedPair {
                        actual,
                        predicted,
                        count,
                    })
            })
            .collect();
        pairs.sort_by_key(|p| std::cmp::Reverse(p.count));
        pairs.truncate(n);
        pairs
    }
}

/// Rank of the true class among the logits: how many classes beat it (ties broken towards
/// the lower index, as `argmax` does). Top-k is correct when the rank is below k.
fn rank_of(row: &[f32], label: usize) -> usize {
    let target = row[label];
    row.iter()
        .enumerate()
        .filter(|&(c, &v)| v > target || (v == target && c < label))
        .count()
}

/// Index of the largest logit (first on ties).
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (c, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = c;
        }
    }
    best
}

/// Running sums over batches.
#[derive(Debug, Clone)]
pub struct MetricsAccumulator {
    num_classes: usize,
    images: u64,
    loss_sum: f64,
    top1: u64,
    top5: u64,
    confusion: Vec<Vec<u64>>,
    /// Per-image outcomes, kept only when asked for ([`MetricsAccumulator::keeping_samples`]).
    samples: Option<Vec<SampleOutcome>>,
}

impl MetricsAccumulator {
    /// Starts empty for `num_classes` classes.
    pub fn new(num_classes: usize) -> Self {
        MetricsAccumulator {
            num_classes,
            images: 0,
            loss_sum: 0.0,
            top1: 0,
            top5: 0,
            confusion: vec![vec![0; num_classes]; num_classes],
            samples: None,
        }
    }

    /// Also keeps every image's [`SampleOutcome`] (its index is its position in the batches).
    pub fn keeping_samples(mut self) -> Self {
        self.samples = Some(Vec::new());
        self
    }

    /// Adds a batch: `logits` `[B, C]`, its labels, and the batch's mean loss.
    pub fn update(&mut self, logits: &Tensor, labels: &[u32], mean_loss: f64) -> Result<()> {
        let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        if rows.len() != labels.len() {
            return Err(TrainError::Config(format!(
                "{} logit rows for {} labels",
                rows.len(),
                labels.len()
            )));
        }
        let k = 5.min(self.num_classes);
        for (index, (row, &label)) in rows.iter().zip(labels).enumerate() {
            if row.len() != self.num_classes || label as usize >= self.num_classes {
                return Err(TrainError::LabelOutOfRange {
                    label,
                    index,
                    num_classes: row.len().min(self.num_classes),
                });
            }
            let rank = rank_of(row, label as usize);
            if rank == 0 {
                self.top1 += 1;
            }
            if rank < k {
                self.top5 += 1;
            }
            let top = argmax(row);
            self.confusion[label as usize][top] += 1;
            if let Some(samples) = &mut self.samples {
                let (probability, loss) = softmax_outcome(row, label as usize, top);
                samples.push(SampleOutcome {
                    index: self.images as usize + index,
                    label,
                    predicted: top as u32,
                    probability,
                    loss,
                });
            }
        }
        self.loss_sum += mean_loss * labels.len() as f64;
        self.images += labels.len() as u64;
        Ok(())
    }

    /// Images seen so far.
    pub fn images(&self) -> u64 {
        self.images
    }

    /// Mean loss so far.
    pub fn mean_loss(&self) -> f64 {
        ratio(self.loss_sum, self.images)
    }

    /// Top-1 accuracy so far.
    pub fn accuracy(&self) -> f64 {
        ratio(self.top1 as f64, self.images)
    }

    /// The report and the kept outcomes (empty unless [`Self::keeping_samples`]).
    pub fn finish_with_samples(mut self, classes: &[String]) -> Evaluation {
        let samples = self.samples.take().unwrap_or_default();
        Evaluation {
            report: self.finish(classes),
            samples,
        }
    }

    /// The report, naming classes with `classes` (indices when names are missing).
    pub fn finish(self, classes: &[String]) -> EvalReport {
        let per_class = self
            .confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let count: u64 = row.iter().sum();
                ClassAccuracy {
                    class: classes.get(c).cloned().unwrap_or_else(|| c.to_string()),
                    accuracy: ratio(row[c] as f64, count),
                    count,
                }
            })
            .collect();
        EvalReport {
            images: self.images,
            loss: ratio(self.loss_sum, self.images),
            accuracy: ratio(self.top1 as f64, self.images),
            top5: ratio(self.top5 as f64, self.images),
            per_class,
            confusion: self.confusion,
        }
    }
}

/// Evaluates `model` on every batch of `loader` (its epoch 0; use an unshuffled loader with
/// eval transforms): eval-mode BatchNorm, no label smoothing, and no autograd graph (the
/// forward runs on `model.detached()`, since candle has no no-grad mode).
pub fn evaluate(model: &cv_models::Model, loader: &cv_data::Loader) -> Result<EvalReport> {
    Ok(evaluate_samples(model, loader)?.report)
}

/// [`evaluate`] with every image's outcome; [`SampleOutcome::index`] is the image's index in
/// `loader.dataset()` (mapped through the loader's order).
pub fn evaluate_samples(model: &cv_models::Model, loader: &cv_data::Loader) -> Result<Evaluation> {
    let frozen = model.detached();
    evaluate_samples_with(
        |x| frozen.forward_t(x, false).map_err(ModelError::into_candle),
        loader,
    )
}

/// [`evaluate_samples`] for any eval-mode forward pass (`images -> logits`), such as an int8
/// network's.
pub fn evaluate_samples_with(
    forward: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    loader: &cv_data::Loader,
) -> Result<Evaluation> {
    let batches = loader.epoch(0).map(|batch| {
        let batch = batch?;
        Ok((forward(&batch.images)?, batch.labels))
    });
    let mut evaluation = evaluate_logit_samples(batches, &loader.dataset().classes)?;
    let order = loader.order(0);
    for s in &mut evaluation.samples {
        s.index = order.get(s.index).copied().unwrap_or(s.index);
    }
    Ok(evaluation)
}

/// The eval step over batches of `(logits, labels)`: mean unsmoothed loss, top-1, top-5,
/// per-class accuracy and confusion over `classes`.
pub fn evaluate_logits(
    batches: impl Iterator<Item = Result<(Tensor, Tensor)>>,
    classes: &[String],
) -> Result<EvalReport> {
    let mut acc = MetricsAccumulator::new(classes.len());
    accumulate(&mut acc, batches)?;
    Ok(acc.finish(classes))
}

/// [`evaluate_logits`] with every image's outcome, indexed by position in the batches.
pub fn evaluate_logit_samples(
    batches: impl Iterator<Item = Result<(Tensor, Tensor)>>,
    classes: &[String],
) -> Result<Evaluation> {
    let mut acc = MetricsAccumulator::new(classes.len()).keeping_samples();
    accumulate(&mut acc, batches)?;
    Ok(acc.finish_with_samples(classes))
}

fn accumulate(
    acc: &mut MetricsAccumulator,
    batches: impl Iterator<Item = Result<(Tensor, Tensor)>>,
) -> Result<()> {
    for batch in batches {
        let (logits, labels) = batch?;
        let loss = cross_entropy(&logits, &labels, 0.0)?.to_scalar::<f32>()?;
        acc.update(&logits, &labels.to_vec1::<u32>()?, loss as f64)?;
    }
    Ok(())
}

fn ratio(num: f64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num / den as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn top1_top5_per_class_and_confusion() {
        // 6 classes; rows are logits.
        let logits = Tensor::new(
            &[
                [9f32, 1., 2., 3., 4., 5.], // label 0: rank 0
                [9., 1., 2., 3., 4., 5.],   // label 1: rank 5 (worst)
                [0., 0., 0., 0., 0., 0.],   // label 3: ties -> rank 3 (argmax 0)
                [1., 2., 3., 4., 5., 6.],   // label 1: rank 4 -> top5
            ],
            &Device::Cpu,
        )
        .unwrap();
        let mut acc = MetricsAccumulator::new(6);
        acc.update(&logits, &[0, 1, 3, 1], 2.0).unwrap();
        let classes: Vec<String> = (0..6).map(|c| format!("c{c}")).collect();
        let r = acc.finish(&classes);
        assert_eq!(r.images, 4);
        assert!((r.loss - 2.0).abs() < 1e-12);
        assert!((r.accuracy - 0.25).abs() < 1e-12);
        assert!((r.top5 - 0.75).abs() < 1e-12);
        assert_eq!(r.confusion[0][0], 1);
        assert_eq!(r.confusion[1][0], 1);
        assert_eq!(r.confusion[1][5], 1);
        assert_eq!(r.confusion[3][0], 1);
        assert_eq!(r.per_class[0].accuracy, 1.0);
        assert_eq!(r.per_class[1].count, 2);
        assert_eq!(r.per_class[1].accuracy, 0.0);
        assert_eq!(r.per_class[2].count, 0);
        assert_eq!(r.per_class[2].class, "c2");
        let pairs = r.most_confused(10);
        let cells: Vec<(usize, usize, u64)> = pairs
            .iter()
            .map(|p| (p.actual, p.predicted, p.count))
            .collect();
        assert_eq!(cells, vec![(1, 0, 1), (1, 5, 1), (3, 0, 1)]);
        assert_eq!(r.most_confused(1).len(), 1);
    }

    #[test]
    fn top_k_is_clipped_to_class_count() {
        let logits = Tensor::new(&[[0f32, 1., 2.], [2., 1., 0.]], &Device::Cpu).unwrap();
        let mut acc = MetricsAccumulator::new(3);
        acc.update(&logits, &[0, 0], 1.0).unwrap();
        let r = acc.finish(&[]);
        assert_eq!(r.top5, 1.0);
        assert_eq!(r.accuracy, 0.5);
    }

    #[test]
    fn json_shape_is_the_cli_contract() {
        let r = EvalReport {
            images: 2,
            loss: 0.5,
            accuracy: 1.0,
            top5: 1.0,
            per_class: vec![ClassAccuracy {
                class: "cat".into(),
                accuracy: 1.0,
                count: 2,
            }],
            confusion: vec![vec![2]],
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"images": 2, "loss": 0.5, "accuracy": 1.0, "top5": 1.0,
                "per_class": [{"class": "cat", "accuracy": 1.0, "count": 2}],
                "confusion": [[2]]})
        );
    }

    #[test]
    fn samples_give_loss_probability_and_rank_by_loss() {
        let logits =
            Tensor::new(&[[2f32, 0., 0.], [0., 0., 5.], [1., 1., 1.]], &Device::Cpu).unwrap();
        let mut acc = MetricsAccumulator::new(3).keeping_samples();
        acc.update(&logits, &[0, 0, 1], 1.0).unwrap();
        let e = acc.finish_with_samples(&[]);
        assert_eq!(e.samples.len(), 3);
        let z = 2f32.exp() + 2.0;
        assert!((e.samples[0].probability - 2f32.exp() / z).abs() < 1e-6);
        assert!((e.samples[0].loss - (z.ln() - 2.0)).abs() < 1e-6);
        assert_eq!(e.samples[1].predicted, 2);
        assert!((e.samples[2].loss - 3f32.ln()).abs() < 1e-6);
        let top: Vec<usize> = e.top_losses(2).iter().map(|s| s.index).collect();
        assert_eq!(top, vec![1, 2]);
        assert_eq!(e.top_losses(10).len(), 3);
        // Huge logits stay finite.
        let big = Tensor::new(&[[1000f32, -1000.]], &Device::Cpu).unwrap();
        let mut acc = MetricsAccumulator::new(2).keeping_samples();
        acc.update(&big, &[1], 0.0).unwrap();
        let s = acc.finish_with_samples(&[]).samples[0];
        assert!((s.loss - 2000.0).abs() < 1e-3 && s.probability == 1.0);
    }

    #[test]
    fn bad_label_is_an_error() {
        let logits = Tensor::new(&[[0f32, 1.]], &Device::Cpu).unwrap();
        let mut acc = MetricsAccumulator::new(2);
        assert!(acc.update(&logits, &[2], 0.0).is_err());
    }
}
