//! Seeded batching: a per-epoch shuffle, optional drop-last, augmentation in parallel and a
//! background thread that prepares the next batches while the model computes.
//!
//! A batch is a pure function of (seed, epoch, position): the order comes from a shuffle RNG
//! seeded by (seed, epoch) and every sample's augmentation from (seed, epoch, dataset index), so
//! thread count, prefetch depth and resuming mid-epoch never change the data.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::seed;
use crate::{Dataset, Pipeline};

thread_local! {
    /// Host buffer reused for batches bound for a GPU (copied, so never handed out).
    static STAGING: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How batches are formed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Shuffle every epoch (training); `false` keeps dataset order (evaluation).
    pub shuffle: bool,
    /// Drop the last, incomplete batch.
    pub drop_last: bool,
    /// Seed of the shuffle and of every augmentation.
    pub seed: u64,
    /// Batches prepared ahead by the background thread (0 = build on demand).
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 128,
            shuffle: true,
            drop_last: false,
            seed: 0,
            prefetch: 2,
        }
    }
}

/// One batch of augmented images.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, 3, H, W]` f32, normalised.
    pub images: Tensor,
    /// `[B]` u32 class indices.
    pub labels: Tensor,
    /// Dataset index of each sample.
    pub indices: Vec<usize>,
}

/// Turns a dataset and a pipeline into batches on a device.
#[derive(Debug, Clone)]
pub struct Loader {
    dataset: Arc<Dataset>,
    pipeline: Arc<Pipeline>,
    config: LoaderConfig,
    device: Device,
}

impl Loader {
    /// A loader over `dataset`; checks the configuration and the pipeline up front. Also calls
    /// [`crate::keep_freed_memory`], so that each batch reuses the memory of one freed earlier.
    pub fn new(
        dataset: Arc<Dataset>,
        pipeline: Pipeline,
        config: LoaderConfig,
        device: Device,
    ) -> Result<Self> {
        crate::keep_freed_memory();
        if config.batch_size == 0 {
            return Err(DataError::Batch {
                message: "batch_size must be positive".into(),
            });
        }
        if dataset.labels.len() != dataset.images.len() {
            return Err(DataError::Batch {
                message: format!(
                    "dataset has {} images but {} labels",
                    dataset.images.len(),
                    dataset.labels.len()
                ),
            });
        }
        pipeline.validate()?;
        Ok(Self {
            dataset,
            pipeline: Arc::new(pipeline),
            config,
            device,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The pipeline.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Where its batches are put.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Dataset indices in the order `epoch` visits them.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            order.shuffle(&mut seed::shuffle_rng(self.config.seed, epoch));
        }
        order
    }

    fn batch_from_order(&self, order: &[usize], epoch: u64, position: usize) -> Result<Batch> {
        let b = self.config.batch_size;
        if position >= self.num_batches() {
            return Err(DataError::Batch {
                message: format!(
                    "batch {position} is past the end of the epoch ({} batches)",
                    self.num_batches()
                ),
            });
        }
        let start = position * b;
        let indices: Vec<usize> = order[start..(start + b).min(order.len())].to_vec();
        let images: Vec<&image::RgbImage> =
            indices.iter().map(|&i| &self.dataset.images[i]).collect();
        let seeds: Vec<u64> = indices
            .iter()
            .map(|&i| seed::sample_seed(self.config.seed, epoch, i as u64))
            .collect();
        let (data, (w, h)) = self
            .pipeline
            .apply_batch(&images, &seeds)
            .map_err(|e| match e {
                DataError::Batch { message } => DataError::Batch {
                    message: format!("epoch {epoch}, batch {position}: {message}"),
                },
                other => other,
            })?;
        let labels: Vec<u32> = indices.iter().map(|&i| self.dataset.labels[i]).collect();
        let n = indices.len();
        let images = Tensor::from_vec(data, (n, 3, h, w), &self.device)?;
        let labels = Tensor::from_vec(labels, n, &self.device)?;
        Ok(Batch {
            images,
            labels,
            indices,
        })
    }

    /// Batch `position` of `epoch`, built on the calling thread (augmentation runs on the
    /// current rayon pool).
    pub fn batch(&self, epoch: u64, position: usize) -> Result<Batch> {
        self.batch_from_order(&self.order(epoch), epoch, position)
    }

    /// Iterate over all batches of `epoch`.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// Iterate over the batches of `epoch` starting at batch `start` (for resuming).
    pub fn epoch_from(&self, epoch: u64, start: usize) -> EpochIter {
        let end = self.num_batches();
        let start = start.min(end);
        if self.config.prefetch == 0 {
            return EpochIter {
                inner: Inner::Direct {
                    loader: self.clone(),
                    order: self.order(epoch),
                    epoch,
                    next: start,
                    end,
                },
                remaining: end - start,
            };
        }
        let (tx, rx) = sync_channel(self.config.prefetch);
        let loader = self.clone();
        let handle = std::thread::Builder::new()
            .name("cv-data-prefetch".into())
            .spawn(move || {
                let order = loader.order(epoch);
                for pos in start..end {
                    let r = loader.batch_from_order(&order, epoch, pos);
                    let failed = r.is_err();
                    // The receiver hung up: the consumer stopped early.
                    if tx.send(r).is_err() || failed {
                        break;
                    }
                }
            });
        let inner = match handle {
            Ok(handle) => Inner::Prefetch {
                rx,
                handle: Some(handle),
            },
            // No thread available: fall back to building on demand.
            Err(_) => Inner::Direct {
                loader: self.clone(),
                order: self.order(epoch),
                epoch,
                next: start,
                end,
            },
        };
        EpochIter {
            inner,
            remaining: end - start,
        }
    }
}

enum Inner {
    Prefetch {
        rx: Receiver<Result<Batch>>,
        handle: Option<JoinHandle<()>>,
    },
    Direct {
        loader: Loader,
        order: Vec<usize>,
        epoch: u64,
        next: usize,
        end: usize,
    },
}

/// The batches of one epoch, in order. After an error it yields nothing more.
pub struct EpochIter {
    inner: Inner,
    remaining: usize,
}

impl std::fmt::Debug for EpochIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochIter")
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let item = match &mut self.inner {
            Inner::Prefetch { rx, .. } => match rx.recv() {
                Ok(r) => r,
                Err(_) => Err(DataError::Batch {
                    message: "the prefetch thread stopped unexpectedly".into(),
                }),
            },
            Inner::Direct {
                loader,
                order,
                epoch,
                next,
                end,
            } => {
                if *next >= *end {
                    return None;
                }
                let r = loader.batch_from_order(order, *epoch, *next);
                *next += 1;
                r
            }
        };
        self.remaining = if item.is_err() { 0 } else { self.remaining - 1 };
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        if let Inner::Prefetch { rx, handle } = &mut self.inner {
            // Hang up first so a producer blocked on a full channel wakes and exits.
            let (_, dummy) = sync_channel(0);
            drop(std::mem::replace(rx, dummy));
            if let Some(h) = handle.take() {
                let _ = h.join();
            }
        }
    }
}
