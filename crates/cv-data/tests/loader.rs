//! Seeded batching: order, shapes, resume, prefetch and thread-count independence.

use std::sync::Arc;

use candle_core::{DType, Device};
use cv_data::{DataError, Dataset, Loader, LoaderConfig, Pipeline};
use image::{Rgb, RgbImage};

fn dataset(n: usize) -> Arc<Dataset> {
    let images = (0..n)
        .map(|i| {
            let i = i as u32;
            RgbImage::from_fn(32, 32, |x, y| {
                Rgb([(x * 7 + i) as u8, (y * 3 + 2 * i) as u8, (x ^ y) as u8])
            })
        })
        .collect();
    let labels = (0..n).map(|i| (i % 10) as u32).collect();
    Arc::new(Dataset {
        images,
        labels,
        classes: (0..10).map(|c| format!("c{c}")).collect(),
    })
}

fn config(batch_size: usize, shuffle: bool, drop_last: bool) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        shuffle,
        drop_last,
        seed: 17,
        prefetch: 2,
    }
}

fn flat(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn batches_cover_the_epoch_once_with_matching_labels() {
    let ds = dataset(53);
    let loader = Loader::new(
        ds.clone(),
        Pipeline::cifar_train(),
        config(10, true, false),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(loader.num_batches(), 6);
    let mut seen = Vec::new();
    for (pos, batch) in loader.epoch(0).enumerate() {
        let b = batch.unwrap();
        let n = if pos == 5 { 3 } else { 10 };
        assert_eq!(b.images.dims(), [n, 3, 32, 32]);
        assert_eq!(b.images.dtype(), DType::F32);
        assert_eq!(b.labels.dtype(), DType::U32);
        let labels = b.labels.to_vec1::<u32>().unwrap();
        let expect: Vec<u32> = b.indices.iter().map(|&i| ds.labels[i]).collect();
        assert_eq!(labels, expect);
        seen.extend(b.indices);
    }
    let order = loader.order(0);
    assert_eq!(seen, order);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, (0..53).collect::<Vec<_>>());
    assert_ne!(order, (0..53).collect::<Vec<_>>(), "shuffled");
    assert_ne!(loader.order(1), order, "a new order every epoch");
}

#[test]
fn drop_last_and_eval_order() {
    let ds = dataset(53);
    let l = Loader::new(
        ds.clone(),
        Pipeline::cifar_eval(),
        config(10, false, true),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(l.num_batches(), 5);
    let all: Vec<usize> = l.epoch(3).flat_map(|b| b.unwrap().indices).collect();
    assert_eq!(all, (0..50).collect::<Vec<_>>());
    // Eval pipeline: pixels are exactly the normalised source.
    let b = l.batch(0, 0).unwrap();
    let v = flat(&b.images);
    let px = ds.images[0].get_pixel(3, 2).0;
    let expect = (px[1] as f32 / 255.0 - cv_data::transforms::CIFAR10_MEAN[1])
        / cv_data::transforms::CIFAR10_STD[1];
    assert!((v[1024 + 2 * 32 + 3] - expect).abs() < 1e-5);
    assert!(matches!(l.batch(0, 5), Err(DataError::Batch { .. })));
}

#[test]
fn a_batch_is_a_pure_function_of_seed_epoch_position() {
    let ds = dataset(40);
    let l = Loader::new(
        ds.clone(),
        Pipeline::imagenet_train(48),
        config(8, true, false),
        Device::Cpu,
    )
    .unwrap();
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    let one = pool(1).install(|| l.batch(2, 3).unwrap());
    let two = pool(2).install(|| l.batch(2, 3).unwrap());
    assert_eq!(one.indices, two.indices);
    assert_eq!(flat(&one.images), flat(&two.images));
    // The prefetching iterator and resuming mid-epoch give the same batches.
    let via_iter: Vec<_> = l.epoch(2).map(|b| b.unwrap()).collect();
    assert_eq!(flat(&via_iter[3].images), flat(&one.images));
    let resumed: Vec<_> = l.epoch_from(2, 3).map(|b| b.unwrap()).collect();
    assert_eq!(resumed.len(), 2);
    assert_eq!(resumed[0].indices, one.indices);
    assert_eq!(flat(&resumed[1].images), flat(&via_iter[4].images));
    // No prefetch: same again.
    let mut cfg = config(8, true, false);
    cfg.prefetch = 0;
    let direct = Loader::new(ds.clone(), Pipeline::imagenet_train(48), cfg, Device::Cpu).unwrap();
    assert_eq!(flat(&direct.batch(2, 3).unwrap().images), flat(&one.images));
    // Another epoch or seed changes the augmentation of the same sample.
    let mut cfg = config(8, true, false);
    cfg.seed = 18;
    let other = Loader::new(ds, Pipeline::imagenet_train(48), cfg, Device::Cpu).unwrap();
    assert_ne!(other.order(2), l.order(2));
}

#[test]
fn stopping_early_does_not_hang_and_errors_are_values() {
    let ds = dataset(100);
    let l = Loader::new(
        ds,
        Pipeline::cifar_train(),
        config(5, true, false),
        Device::Cpu,
    )
    .unwrap();
    let mut it = l.epoch(0);
    assert!(it.next().unwrap().is_ok());
    drop(it);

    // Images of different sizes and no fixed-size transform: an error, not a panic.
    let mut mixed = (*dataset(4)).clone();
    mixed.images[2] = RgbImage::new(20, 32);
    let l = Loader::new(
        Arc::new(mixed),
        Pipeline::cifar_eval(),
        config(4, false, false),
        Device::Cpu,
    )
    .unwrap();
    let results: Vec<_> = l.epoch(0).collect();
    assert_eq!(results.len(), 1);
    let err = results.into_iter().next().unwrap().unwrap_err();
    assert!(matches!(err, DataError::Batch { .. }), "{err}");
    assert!(err.to_string().contains("batch 0"), "{err}");

    assert!(Loader::new(
        dataset(3),
        Pipeline::cifar_eval(),
        config(0, false, false),
        Device::Cpu
    )
    .is_err());
}
