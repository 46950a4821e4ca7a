//! Data-pipeline throughput: five torchvision recipes on 32x32 input, batch 100, through
//! the real `Loader` (shuffle, per-sample seeded augmentation on rayon, background prefetch,
//! candle tensors on the CPU), consumed as fast as it produces.

use std::sync::Arc;

use candle_core::Device;
use cv_data::transforms::{Transform, CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD};
use cv_data::{Dataset, Loader, LoaderConfig, Pipeline};

use super::{models, throughput, Measurement, Reference, Report, Settings};

const BATCH: usize = 100;

/// torchvision DataLoader (2 workers) on the TrivialAugmentWide workloads, images/s, for runs
/// without `--compare-pytorch` (docs/benchmarks.md has the machine).
const REFERENCE_TA_224: f64 = 796.0;
const REFERENCE_TA_32: f64 = 3_757.0;

/// Synthetic 32x32 images (deterministic noise with structure), so no download is needed.
fn dataset(n: usize) -> Dataset {
    let images = (0..n as u32)
        .map(|i| {
            image::RgbImage::from_fn(32, 32, |x, y| {
                let v =
                    (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503) ^ i.wrapping_mul(97))
                        .wrapping_mul(2_246_822_519);
                image::Rgb([(v >> 8) as u8, (v >> 16) as u8, (v >> 24) as u8])
            })
        })
        .collect();
    Dataset {
        images,
        labels: (0..n as u32).map(|i| i % 10).collect(),
        classes: (0..10).map(|c| c.to_string()).collect(),
    }
}

/// The workloads, with torchvision's DataLoader (2 workers) on the same 2-core machine. The
/// TrivialAugmentWide ones follow torchvision's reference order: crop, flip, policy.
fn workloads() -> Vec<(&'static str, Pipeline, [f64; 2])> {
    vec![
        (
            "random_resized_crop_224+flip+normalize",
            Pipeline {
                transforms: vec![Transform::random_resized_crop(224), Transform::flip(0.5)],
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
            [1_100.0, 1_400.0],
        ),
        (
            "resize_224+normalize",
            Pipeline {
                transforms: vec![Transform::resize(224)],
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
            [1_250.0, 1_470.0],
        ),
        (
            "random_crop_32_pad_4+flip+normalize",
            Pipeline {
                transforms: vec![Transform::random_crop(32, 4), Transform::flip(0.5)],
                mean: CIFAR10_MEAN,
                std: CIFAR10_STD,
            },
            [6_500.0, 9_400.0],
        ),
        (
            "random_resized_crop_224+flip+trivial_augment_wide+normalize",
            Pipeline {
                transforms: vec![
                    Transform::random_resized_crop(224),
                    Transform::flip(0.5),
                    Transform::trivial_augment_wide(),
                ],
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
            [REFERENCE_TA_224, REFERENCE_TA_224],
        ),
        (
            "random_crop_32_pad_4+flip+trivial_augment_wide+normalize",
            Pipeline {
                transforms: vec![
                    Transform::random_crop(32, 4),
                    Transform::flip(0.5),
                    Transform::trivial_augment_wide(),
                ],
                mean: CIFAR10_MEAN,
                std: CIFAR10_STD,
            },
            [REFERENCE_TA_32, REFERENCE_TA_32],
        ),
    ]
}

pub fn run(settings: &Settings, report: &mut Report, compare_pytorch: bool) -> anyhow::Result<()> {
    let torchvision = if compare_pytorch {
        models::check_torch()?;
        let names: Vec<String> = workloads()
            .iter()
            .map(|(name, _, _)| format!("{name} (loader)"))
            .filter(|n| settings.selected(n))
            .collect();
        if names.is_empty() {
            None
        } else {
            Some(models::run_script(
                "bench_torchvision_data.py",
                "torchvision DataLoader, 2 workers",
                &["--workers".into(), "2".into()],
                settings,
                &names,
            )?)
        }
    } else {
        None
    };
    // CIFAR-10's training set size, so epoch boundaries (a new prefetch thread, a first batch
    // nobody prefetched) weigh what they weigh in training.
    let n = if settings.quick { 2 * BATCH } else { 50_000 };
    let ds = Arc::new(dataset(n));
    for (name, pipeline, reference) in workloads() {
        let reference = Reference {
            what: "torchvision DataLoader, 2 workers".into(),
            range: reference,
        };
        let params = serde_json::json!({
            "input": [32, 32],
            "batch_size": BATCH,
            "dataset_size": n,
            "prefetch": 2,
            "pipeline": &pipeline,
        });

        // End to end: the Loader as training uses it (shuffle, seeds, prefetch, tensors).
        let loader_name = format!("{name} (loader)");
        let reference = match torchvision
            .as_ref()
            .and_then(|t| Some((t, *t.values.get(&loader_name)?)))
        {
            Some((t, v)) => Reference {
                what: format!(
                    "torchvision DataLoader (torch {}), 2 workers, same run",
                    t.version
                ),
                range: [v, v],
            },
            None => reference,
        };
        if settings.selected(&loader_name) {
            let config = LoaderConfig {
                batch_size: BATCH,
                shuffle: true,
                drop_last: false,
                seed: 0,
                prefetch: 2,
            };
            let loader = Loader::new(ds.clone(), pipeline.clone(), config, Device::Cpu)?;
            // Epochs are consumed back to back; each step is one batch.
            let mut epoch = 0u64;
            let mut it = loader.epoch(epoch);
            let timing = throughput(settings, || {
                let batch = match it.next() {
                    Some(b) => b?,
                    None => {
                        epoch += 1;
                        it = loader.epoch(epoch);
                        it.next().ok_or_else(|| anyhow::anyhow!("empty epoch"))??
                    }
                };
                Ok(batch.indices.len() as u64)
            })?;
            report.push(measurement(
                &loader_name,
                timing,
                params.clone(),
                Some(reference.clone()),
            ));
        }

        // Augmentation alone into a reused buffer: the ceiling without allocation and tensors.
        let augment_name = format!("{name} (augment into reused buffer)");
        if settings.selected(&augment_name) {
            let images: Vec<&image::RgbImage> = ds.images.iter().collect();
            let (w, h) = pipeline.output_size(32, 32)?;
            let mut buf = vec![0f32; BATCH * 3 * w * h];
            let mut pos = 0usize;
            let mut round = 0u64;
            let timing = throughput(settings, || {
                let batch = &images[pos..pos + BATCH];
                let seeds: Vec<u64> = (0..BATCH as u64)
                    .map(|i| cv_data::seed::sample_seed(0, round, pos as u64 + i))
                    .collect();
                pipeline.apply_batch_into(batch, &seeds, &mut buf)?;
                pos += BATCH;
                if pos + BATCH > images.len() {
                    pos = 0;
                    round += 1;
                }
                Ok(BATCH as u64)
            })?;
            report.push(measurement(&augment_name, timing, params, None));
        }
    }
    Ok(())
}

fn measurement(
    name: &str,
    timing: super::Timing,
    params: serde_json::Value,
    reference: Option<Reference>,
) -> Measurement {
    Measurement {
        group: "data".into(),
        name: name.into(),
        unit: "images/s".into(),
        value: timing.rate(),
        items: timing.items,
        iterations: timing.iterations,
        seconds: timing.seconds,
        cpu_seconds: timing.cpu_seconds,
        params,
        reference,
    }
}
