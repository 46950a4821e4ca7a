//! The training loop end to end on small learnable data made here: learning, output files,
//! exact resume, NaN handling, and what each fine-tuning mode may change.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cv_data::{DataFormat, Dataset, Splits};
use cv_models::{Architecture, Model};
use cv_testkit::cifar::SplitMix;
use cv_train::checkpoint::{
    CheckpointConfig, TrainState, CONFIG_FILE, METRICS_FILE, MODEL_BEST_FILE, MODEL_FILE,
    REPORT_FILE, STATE_FILE,
};
use cv_train::config::{Augment, OptimizerKind, Precision, RunSettings, TrainConfig, TrainMode};
use cv_train::metrics::EvalReport;
use cv_train::schedule::Schedule;
use cv_train::trainer::{
    on_epoch, run, run_with_hooks, Flow, Hook, Init, StepContext, StepOutput, TrainBatch, TrainJob,
};
use cv_train::TrainError;

const CLASSES: usize = 4;

fn dataset(n: usize, seed: u64) -> Dataset {
    let mut rng = SplitMix(seed);
    let labels: Vec<u32> = (0..n).map(|i| (i % CLASSES) as u32).collect();
    Dataset {
        images: labels
            .iter()
            .map(|&l| cv_testkit::folder::class_image(l as usize, 32, 32, &mut rng))
            .collect(),
        labels,
        classes: (0..CLASSES).map(|c| format!("class{c}")).collect(),
    }
}

fn splits(train: usize, test: usize) -> Splits {
    let train = dataset(train, 1);
    Splits {
        format: DataFormat::Folder,
        classes: train.classes.clone(),
        train,
        test: dataset(test, 2),
        skipped: vec![],
    }
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 16,
        lr: 0.02,
        weight_decay: 5e-4,
        schedule: Schedule::Cosine {
            warmup_steps: 2,
            min_lr: 0.0,
        },
        ..Default::default()
    }
}

fn job(arch: Architecture, config: TrainConfig, out: &Path, train: usize, test: usize) -> TrainJob {
    TrainJob {
        splits: splits(train, test),
        architecture: arch,
        init: Init::Scratch { seed: 7 },
        config,
        settings: RunSettings {
            quiet: true,
            prefetch: 1,
            ..Default::default()
        },
        data: None,
        out_dir: out.to_path_buf(),
        resume: false,
        device: Device::Cpu,
    }
}

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join(MODEL_FILE), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// The freshly initialised weights of `Init::Scratch { seed }`.
fn initial(arch: Architecture, seed: u64) -> HashMap<String, Tensor> {
    let varmap = VarMap::new();
    let _model = Model::new(
        arch,
        CLASSES,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    cv_models::init::initialise(&varmap, arch, seed).unwrap();
    cv_models::state::state_dict(&varmap).unwrap()
}

#[test]
fn small_cnn_learns_and_writes_the_checkpoint_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let summary = run(&job(Architecture::SimpleCnn, config(4), &out, 192, 64)).unwrap();
    let eval = summary.final_eval.unwrap();
    eprintln!("cnn: {:?}", summary.records);
    assert_eq!(eval.images, 64);
    assert!(
        eval.accuracy >= 0.7,
        "test accuracy {} (chance 0.25)",
        eval.accuracy
    );
    assert_eq!(eval.per_class.len(), CLASSES);
    assert_eq!(eval.confusion.iter().flatten().sum::<u64>(), 64);

    // metrics.jsonl: one object per epoch with the documented keys.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join(METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[3]["epoch"], 4);
    assert!(lines[3]["images_per_s"].as_f64().unwrap() > 0.0);
    assert!(lines[3]["test_top5"].as_f64().unwrap() >= eval.accuracy);

    // config.json: a model card plus every hyper-parameter.
    let card = cv_train::checkpoint::ModelCard::read(&out).unwrap();
    assert_eq!(card.architecture, Architecture::SimpleCnn);
    assert_eq!(card.classes.len(), CLASSES);
    assert_eq!(card.eval_transforms.mean, cv_data::transforms::CIFAR10_MEAN);
    let cfg = CheckpointConfig::read(&out).unwrap();
    assert_eq!(cfg.train, config(4));
    assert_eq!(cfg.epochs_completed, 4);
    assert!(
        !cfg.train_transforms.transforms.is_empty(),
        "augmented training"
    );
    // model.safetensors has exactly the torchvision keys and loads back strictly.
    let w = weights(&out);
    let mut keys: Vec<_> = w.keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "conv1.bias",
            "conv1.weight",
            "conv2.bias",
            "conv2.weight",
            "fc1.bias",
            "fc1.weight",
            "fc2.bias",
            "fc2.weight",
            "fc3.bias",
            "fc3.weight"
        ]
    );
    for f in ["curves.png", "curves.svg", STATE_FILE, CONFIG_FILE] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert_eq!(
        summary.report.as_deref(),
        Some(out.join(REPORT_FILE).as_path())
    );
    assert_report(&out, &eval, 12, "from scratch (seed 7)");
    // No temporary file left behind.
    assert!(std::fs::read_dir(&out).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with('.')));

    // A second run into the same folder without resume is refused, and changes nothing.
    let err = run(&job(Architecture::SimpleCnn, config(4), &out, 192, 64)).unwrap_err();
    assert!(err.to_string().contains("resume"), "{err}");
    assert_eq!(
        max_diff(&weights(&out)["fc3.weight"], &w["fc3.weight"]),
        0.0
    );
    // Resuming with other hyper-parameters is refused, naming the state file.
    let mut other = job(
        Architecture::SimpleCnn,
        TrainConfig {
            lr: 0.5,
            ..config(5)
        },
        &out,
        192,
        64,
    );
    other.resume = true;
    let err = run(&other).unwrap_err().to_string();
    assert!(
        err.contains(STATE_FILE) && err.contains("hyper-parameters"),
        "{err}"
    );
    // Resuming a finished run with the same epochs trains nothing more.
    let mut same = job(Architecture::SimpleCnn, config(4), &out, 192, 64);
    same.resume = true;
    let again = run(&same).unwrap();
    assert_eq!(again.epochs_completed, 4);
    assert_eq!(
        max_diff(&weights(&out)["fc3.weight"], &w["fc3.weight"]),
        0.0
    );
}

/// `report.html` of the run in `out`: every section, the numbers of `eval`, `tiles`
/// highest-loss images (each shown as seen and under its Grad-CAM, highest loss first), the
/// recipe, and nothing that reaches outside the file.
fn assert_report(out: &Path, eval: &EvalReport, tiles: usize, init: &str) {
    use base64::Engine;
    let html = std::fs::read_to_string(out.join(REPORT_FILE)).unwrap();
    for id in cv_train::run_report::SECTIONS {
        assert!(html.contains(&format!("id=\"{id}\"")), "section {id}");
    }
    // The curves with their legend, the heatmap with class names and a tooltip per cell.
    assert!(html.contains("train loss") && html.contains("test accuracy"));
    let cells = eval.confusion.len() * eval.confusion.len();
    assert_eq!(html.matches("<title>true class").count(), cells);
    for c in &eval.per_class {
        assert!(
            html.contains(&format!(">{}</text>", c.class)),
            "{}",
            c.class
        );
        let row = format!(
            "<td>{}</td><td class=\"num\">{:.2}%</td>",
            c.class,
            100.0 * c.accuracy
        );
        assert!(html.contains(&row), "{row}");
    }
    assert!(html.contains(&format!(
        "top-1 accuracy <b>{:.2}%</b>",
        100.0 * eval.accuracy
    )));
    // The grid: highest loss first, each image twice (as seen, with its heatmap).
    assert_eq!(html.matches("<figure class=\"tile\">").count(), tiles);
    let losses: Vec<f64> = html
        .split("<br>loss ")
        .skip(1)
        .map(|t| t.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(losses.len(), tiles);
    assert!(losses.windows(2).all(|w| w[0] >= w[1]), "{losses:?}");
    let pngs: Vec<image::RgbImage> = html
        .split("src=\"data:image/png;base64,")
        .skip(1)
        .map(|t| {
            let b64 = &t[..t.find('"').unwrap()];
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            image::load_from_memory(&bytes).unwrap().to_rgb8()
        })
        .collect();
    assert_eq!(pngs.len(), 2 * tiles);
    for pair in pngs.chunks(2) {
        assert_eq!(pair[0].dimensions(), (32, 32));
        assert_eq!(pair[1].dimensions(), (32, 32));
        assert_ne!(pair[0], pair[1], "the overlay draws the heatmap");
    }
    // The recipe, and a page that needs nothing but itself.
    assert!(html.contains(init), "{init}");
    assert!(html.contains("<th>batch_size</th><td>16</td>"));
    assert!(!html.contains("<script"));
    let outside = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!outside.contains("http://") && !outside.contains("https://"));
    assert!(!outside.contains("src=\"http") && !outside.contains("url("));
}

#[test]
fn resnet18_learns_from_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let c = TrainConfig {
        lr: 0.01,
        batch_size: 8,
        augment: Augment::None,
        ..config(2)
    };
    let summary = run(&job(Architecture::ResNet18, c, dir.path(), 96, 32)).unwrap();
    eprintln!("resnet: {:?}", summary.records);
    let acc = summary.final_eval.unwrap().accuracy;
    assert!(acc >= 0.6, "test accuracy {acc} (chance 0.25)");
    // Strict torchvision state dict: buffers and num_batches_tracked included.
    let w = weights(dir.path());
    assert_eq!(w.len(), 122);
    assert_eq!(w["bn1.num_batches_tracked"].dtype(), DType::I64);
    assert_eq!(w["bn1.num_batches_tracked"].to_scalar::<i64>().unwrap(), 24);
    assert_eq!(w["fc.weight"].dims(), &[CLASSES, 512]);
}

fn assert_same_weights(a: &Path, b: &Path) {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    for (k, t) in &wa {
        let d = max_diff(t, &wb[k]);
        assert!(d <= 1e-6, "{k} differs by {d}");
    }
}

#[test]
fn resume_equals_uninterrupted_training_sgd_cosine() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let c = TrainConfig {
        nesterov: true,
        label_smoothing: 0.1,
        ..config(2)
    };
    let full = run(&job(Architecture::SimpleCnn, c.clone(), &a, 64, 16)).unwrap();
    // Interrupted after the first epoch, then resumed.
    let first = run_with_hooks(
        &job(Architecture::SimpleCnn, c.clone(), &b, 64, 16),
        &mut [&mut on_epoch(|_| Flow::Stop)],
    )
    .unwrap();
    assert_eq!(first.epochs_completed, 1);
    let mut resumed_job = job(Architecture::SimpleCnn, c, &b, 64, 16);
    resumed_job.resume = true;
    let resumed = run(&resumed_job).unwrap();
    assert_eq!(resumed.resumed_at_epoch, Some(1));
    assert_eq!(resumed.global_step, full.global_step);
    assert_eq!(resumed.records.len(), 2);
    assert_eq!(resumed.records[1].train_loss, full.records[1].train_loss);
    assert_same_weights(&a, &b);
    assert_eq!(
        std::fs::read_to_string(a.join(METRICS_FILE))
            .unwrap()
            .lines()
            .count(),
        2
    );
    assert_eq!(
        std::fs::read_to_string(b.join(METRICS_FILE))
            .unwrap()
            .lines()
            .count(),
        2
    );
}

#[test]
fn resume_equals_uninterrupted_training_adamw_with_unfreezing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let c = TrainConfig {
        optimizer: OptimizerKind::AdamW,
        lr: 2e-3,
        weight_decay: 0.01,
        unfreeze_after: Some(1),
        backbone_lr_scale: 0.1,
        ..config(3)
    };
    run(&job(Architecture::SimpleCnn, c.clone(), &a, 48, 16)).unwrap();
    let mut epochs = 0;
    run_with_hooks(
        &job(Architecture::SimpleCnn, c.clone(), &b, 48, 16),
        &mut [&mut on_epoch(|_| {
            epochs += 1;
            if epochs < 2 {
                Flow::Continue
            } else {
                Flow::Stop
            }
        })],
    )
    .unwrap();
    let mut resumed = job(Architecture::SimpleCnn, c, &b, 48, 16);
    resumed.resume = true;
    run(&resumed).unwrap();
    assert_same_weights(&a, &b);
}

#[test]
fn nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // 64 images / 16 = 4 steps per epoch; from step 4 on the rate is 1e28: the weights blow up.
    let c = TrainConfig {
        schedule: Schedule::Step {
            step_size: 4,
            gamma: 1e30,
        },
        ..config(3)
    };
    let err = run(&job(Architecture::SimpleCnn, c, dir.path(), 64, 16)).unwrap_err();
    eprintln!("{err}");
    let TrainError::NonFiniteLoss {
        epoch, batch, step, ..
    } = err
    else {
        panic!("{err}")
    };
    assert_eq!(epoch, 2);
    assert_eq!(step, 4 + batch);
    assert!(err_text_names_step(epoch, batch));
    // The epoch-1 checkpoint is intact, loadable and consistent with the resume state.
    let cfg = CheckpointConfig::read(dir.path()).unwrap();
    assert_eq!(cfg.epochs_completed, 1);
    let w = weights(dir.path());
    let state = TrainState::read(dir.path(), &Device::Cpu).unwrap().unwrap();
    assert_eq!(state.meta.epochs_completed, 1);
    for (k, t) in &w {
        assert_eq!(max_diff(t, &state.model[k]), 0.0, "{k}");
        let finite = t
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert!(finite.iter().all(|v| v.is_finite()), "{k}");
    }
    let varmap = VarMap::new();
    let _m = Model::new(
        Architecture::SimpleCnn,
        CLASSES,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    cv_models::state::load_state_dict(&varmap, &w).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join(METRICS_FILE))
            .unwrap()
            .lines()
            .count(),
        1
    );
}

fn err_text_names_step(epoch: usize, batch: usize) -> bool {
    let e = TrainError::NonFiniteLoss {
        value: f32::NAN,
        epoch,
        batch,
        step: 0,
    };
    let s = e.to_string();
    s.contains(&format!("epoch {epoch}")) && s.contains(&format!("batch {batch}"))
}

#[test]
fn head_mode_changes_no_backbone_weight_or_statistic() {
    let dir = tempfile::tempdir().unwrap();
    let c = TrainConfig {
        mode: TrainMode::Head,
        lr: 0.05,
        ..config(2)
    };
    let summary = run(&job(Architecture::ResNet18, c, dir.path(), 32, 16)).unwrap();
    let before = initial(Architecture::ResNet18, 7);
    let after = weights(dir.path());
    for (k, t) in &before {
        let d = max_diff(t, &after[k]);
        if k.starts_with("fc.") {
            assert!(d > 0.0, "{k} did not train");
        } else {
            assert_eq!(d, 0.0, "{k} changed in head mode");
        }
    }
    // Every epoch pushes every train and test image through the backbone again.
    assert_eq!(summary.backbone_images, 2 * (32 + 16));
}

#[test]
fn probe_computes_each_feature_once_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    let c = TrainConfig {
        mode: TrainMode::Probe,
        lr: 0.1,
        ..config(5)
    };
    let summary = run(&job(Architecture::ResNet18, c, dir.path(), 64, 32)).unwrap();
    assert_eq!(
        summary.backbone_images,
        64 + 32,
        "features computed once per image"
    );
    let eval = summary.final_eval.unwrap();
    let acc = eval.accuracy;
    eprintln!("probe: {:?}", summary.records);
    // The report of a probe: evaluated on cached features, Grad-CAM through the network.
    assert_report(dir.path(), &eval, 12, "from scratch (seed 7)");
    assert!(acc >= 0.6, "probe accuracy {acc}");
    let before = initial(Architecture::ResNet18, 7);
    let after = weights(dir.path());
    for (k, t) in &before {
        if !k.starts_with("fc.") {
            assert_eq!(max_diff(t, &after[k]), 0.0, "{k} changed in probe mode");
        }
    }
    // No augmentation in a probe: the recorded train transforms are the eval ones.
    let cfg = CheckpointConfig::read(dir.path()).unwrap();
    assert_eq!(cfg.train_transforms, cfg.card.eval_transforms);
}

/// Fine-tuning torchvision's ResNet-18 layout from a safetensors file (the parity fixture,
/// 1000 classes): the head is replaced, images are upscaled to 64 and normalised with the
/// weights' mean/std, and the checkpoint records where the weights came from.
#[test]
fn pretrained_resnet18_fine_tunes_at_64_pixels() {
    let Some(fixtures) = cv_testkit::fixtures::parity_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let weights_path = fixtures.join("resnet18.safetensors");
    let c = TrainConfig {
        mode: TrainMode::Probe,
        image_size: 64,
        optimizer: OptimizerKind::AdamW,
        lr: 0.05,
        weight_decay: 0.0,
        ..config(12)
    };
    let mut j = job(Architecture::ResNet18, c, dir.path(), 32, 16);
    j.init = Init::Pretrained {
        path: weights_path.clone(),
        source: weights_path.display().to_string(),
        origin: "parity-fixture".into(),
        mean: cv_data::transforms::IMAGENET_MEAN,
        std: cv_data::transforms::IMAGENET_STD,
    };
    let summary = run(&j).unwrap();
    let accs: Vec<_> = summary
        .records
        .iter()
        .map(|r| r.test_acc.unwrap())
        .collect();
    eprintln!("pretrained probe test accuracy per epoch: {accs:?}");
    let acc = summary.final_eval.unwrap().accuracy;
    assert!(acc >= 0.6, "fine-tuned accuracy {acc}");
    let card = cv_train::checkpoint::ModelCard::read(dir.path()).unwrap();
    assert_eq!(card.image_size, 64);
    assert_eq!(card.weights_from.as_deref(), Some("parity-fixture"));
    assert_eq!(
        card.eval_transforms.mean,
        cv_data::transforms::IMAGENET_MEAN
    );
    assert!(
        !card.eval_transforms.transforms.is_empty(),
        "32 -> 64 resize"
    );
    // The backbone is the pretrained one, untouched; the head has 4 outputs.
    let pretrained = candle_core::safetensors::load(&weights_path, &Device::Cpu).unwrap();
    let after = weights(dir.path());
    assert_eq!(
        max_diff(
            &pretrained["layer3.1.conv2.weight"],
            &after["layer3.1.conv2.weight"]
        ),
        0.0
    );
    assert_eq!(
        max_diff(&pretrained["bn1.running_var"], &after["bn1.running_var"]),
        0.0
    );
    assert_eq!(after["fc.weight"].dims(), &[CLASSES, 512]);
}

#[test]
fn gradual_unfreezing_trains_the_backbone_only_after_n_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let c = TrainConfig {
        unfreeze_after: Some(1),
        backbone_lr_scale: 0.1,
        ..config(2)
    };
    let before = initial(Architecture::SimpleCnn, 7);
    let mut snapshots = Vec::new();
    let out = dir.path().to_path_buf();
    run_with_hooks(
        &job(Architecture::SimpleCnn, c, &out, 32, 16),
        &mut [&mut on_epoch(|_| {
            snapshots.push(weights(&out));
            Flow::Continue
        })],
    )
    .unwrap();
    assert_eq!(
        max_diff(&before["conv1.weight"], &snapshots[0]["conv1.weight"]),
        0.0
    );
    assert!(max_diff(&before["fc3.weight"], &snapshots[0]["fc3.weight"]) > 0.0);
    assert!(max_diff(&snapshots[0]["conv1.weight"], &snapshots[1]["conv1.weight"]) > 0.0);
}

/// `--precision bf16` on the CPU: where the CPU has AMX-BF16 or AVX512-BF16, full training of
/// ResNet-18 on the generated learnable set reaches f32's test accuracy within 0.5 points and records the
/// arithmetic in `config.json`; elsewhere it is refused, naming what the CPU lacks, before
/// anything is written.
#[test]
fn bf16_full_fine_tuning_on_the_cpu_matches_f32_accuracy_or_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let job_for = |precision, out: &Path| {
        let c = TrainConfig {
            precision,
            mode: TrainMode::Full,
            lr: 0.005,
            augment: Augment::None,
            ..config(4)
        };
        job(Architecture::ResNet18, c, out, 128, 64)
    };
    let bf16_out = dir.path().join("bf16");
    if let Err(e) = cv_ops::bf16_kernel() {
        let err = run(&job_for(Precision::Bf16, &bf16_out)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, TrainError::Config(_)), "{text}");
        assert!(
            text.contains("bf16") && text.contains(&e.to_string()),
            "{text}"
        );
        assert!(!bf16_out.join(MODEL_FILE).exists());
        eprintln!("notice: {e}; bf16 training is not tested on this CPU");
        return;
    }
    let f32 = run(&job_for(Precision::F32, &dir.path().join("f32"))).unwrap();
    let bf16 = run(&job_for(Precision::Bf16, &bf16_out)).unwrap();
    let (a32, a16) = (
        f32.final_eval.unwrap().accuracy,
        bf16.final_eval.unwrap().accuracy,
    );
    eprintln!("test accuracy f32 {a32}, bf16 {a16}");
    assert!(a32 >= 0.6, "f32 accuracy {a32} (chance 0.25)");
    assert!(a16 >= a32 - 0.005, "bf16 accuracy {a16} vs f32 {a32}");
    // It really ran in bf16: the losses differ, and config.json says on which kernels.
    assert_ne!(f32.records[0].train_loss, bf16.records[0].train_loss);
    let config = cv_train::checkpoint::CheckpointConfig::read(&bf16_out).unwrap();
    let compute = config.compute.unwrap_or_default();
    assert!(compute.starts_with("bf16/"), "{compute}");
    // The checkpoint is f32, as the weights were.
    assert_eq!(weights(&bf16_out)["conv1.weight"].dtype(), DType::F32);
}

/// A hook written outside the loop: it records the loss of every step.
#[derive(Default)]
struct LossLog {
    steps: Vec<(usize, usize, f32)>,
}

impl Hook for LossLog {
    fn after_step(
        &mut self,
        out: &StepOutput,
        _vars: &VarMap,
        ctx: &StepContext,
    ) -> cv_train::Result<()> {
        self.steps.push((ctx.epoch, ctx.global_step, out.loss));
        Ok(())
    }
}

#[test]
fn a_hook_records_the_loss_of_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = LossLog::default();
    let summary = run_with_hooks(
        &job(Architecture::SimpleCnn, config(2), dir.path(), 64, 16),
        &mut [&mut log],
    )
    .unwrap();
    assert_eq!(log.steps.len(), summary.global_step);
    assert_eq!(log.steps.len(), 2 * 64 / 16);
    for (i, (_, step, _)) in log.steps.iter().enumerate() {
        assert_eq!(*step, i);
    }
    // Equal batches: the epoch's train loss is the mean of its steps' losses.
    for record in &summary.records {
        let losses: Vec<f64> = log
            .steps
            .iter()
            .filter(|(epoch, _, _)| epoch + 1 == record.epoch)
            .map(|(_, _, l)| *l as f64)
            .collect();
        let mean = losses.iter().sum::<f64>() / losses.len() as f64;
        assert!(
            (mean - record.train_loss).abs() < 1e-6,
            "{mean} vs {}",
            record.train_loss
        );
    }
}

/// Turns every batch's labels into one-hot soft targets (what MixUp does with a weight of 1)
/// and adds a constant to the loss (an extra term without gradient).
struct OneHotPlusOne;

impl Hook for OneHotPlusOne {
    fn on_batch(
        &mut self,
        mut batch: TrainBatch,
        _ctx: &StepContext,
    ) -> cv_train::Result<TrainBatch> {
        let n = batch.labels.dim(0)?;
        let eye = Tensor::eye(CLASSES, DType::F32, &Device::Cpu)?;
        batch.targets = Some(eye.index_select(&batch.labels, 0)?.reshape((n, CLASSES))?);
        Ok(batch)
    }

    fn extra_loss(
        &mut self,
        _batch: &TrainBatch,
        _logits: &Tensor,
        _ctx: &StepContext,
    ) -> cv_train::Result<Option<Tensor>> {
        Ok(Some(Tensor::new(1f32, &Device::Cpu)?))
    }
}

#[test]
fn batch_and_loss_hooks_plug_into_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (mut plain, mut hooked) = (LossLog::default(), LossLog::default());
    run_with_hooks(
        &job(Architecture::SimpleCnn, config(1), &a, 48, 16),
        &mut [&mut plain],
    )
    .unwrap();
    run_with_hooks(
        &job(Architecture::SimpleCnn, config(1), &b, 48, 16),
        &mut [&mut OneHotPlusOne, &mut hooked],
    )
    .unwrap();
    // One-hot targets train exactly as class indices; the constant shifts each loss by 1.
    assert_same_weights(&a, &b);
    for (p, h) in plain.steps.iter().zip(&hooked.steps) {
        assert!((h.2 - p.2 - 1.0).abs() < 1e-5, "{} vs {}", h.2, p.2);
    }
}

/// Checks, after the recipe's own hooks, that every batch carries MixUp/CutMix targets: rows
/// of probabilities whose dominant label is the batch's label.
struct SeesMixedTargets(usize);

impl Hook for SeesMixedTargets {
    fn on_batch(&mut self, batch: TrainBatch, _ctx: &StepContext) -> cv_train::Result<TrainBatch> {
        let targets = batch
            .targets
            .as_ref()
            .expect("mixed targets")
            .to_vec2::<f32>()?;
        for (row, label) in targets.iter().zip(batch.labels.to_vec1::<u32>()?) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
            assert!(row[label as usize] >= 0.5 - 1e-6, "{row:?} label {label}");
        }
        self.0 += 1;
        Ok(batch)
    }
}

#[test]
fn mixup_and_cutmix_learn_reproducibly_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let c = TrainConfig {
        mixup_alpha: Some(0.2),
        cutmix_alpha: Some(1.0),
        ..config(5)
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut seen = SeesMixedTargets(0);
    let summary = run_with_hooks(
        &job(Architecture::SimpleCnn, c.clone(), &a, 192, 64),
        &mut [&mut seen],
    )
    .unwrap();
    assert_eq!(seen.0, 5 * 192 / 16);
    let acc = summary.final_eval.unwrap().accuracy;
    eprintln!("mixed: {:?}", summary.records);
    assert!(acc >= 0.5, "accuracy {acc} with MixUp/CutMix (chance 0.25)");
    run(&job(Architecture::SimpleCnn, c.clone(), &b, 192, 64)).unwrap();
    assert_same_weights(&a, &b);
    let cfg = CheckpointConfig::read(&a).unwrap();
    assert_eq!(
        (cfg.train.mixup_alpha, cfg.train.cutmix_alpha),
        (Some(0.2), Some(1.0))
    );
    // Mixing needs images: a probe's cached features are refused before anything trains.
    let probe = TrainConfig {
        mode: TrainMode::Probe,
        ..c
    };
    let err = run(&job(
        Architecture::ResNet18,
        probe,
        &dir.path().join("p"),
        32,
        16,
    ))
    .unwrap_err();
    assert!(err.to_string().contains("probe"), "{err}");
}

#[test]
fn model_best_holds_the_best_epoch_and_early_stop_ends_the_run() {
    let dir = tempfile::tempdir().unwrap();
    // Every epoch's weights, to compare model_best.safetensors with.
    let mut saved: Vec<Vec<u8>> = Vec::new();
    let out = dir.path().join("run");
    let mut keep = on_epoch(|end| {
        saved.push(std::fs::read(end.checkpoint.join(MODEL_FILE)).unwrap());
        Flow::Continue
    });
    let summary = run_with_hooks(
        &job(Architecture::SimpleCnn, config(5), &out, 96, 64),
        &mut [&mut keep],
    )
    .unwrap();
    drop(keep);
    let (best, _) = cv_train::selection::best_epoch(&summary.records).unwrap();
    let kept = std::fs::read(out.join(MODEL_BEST_FILE)).unwrap();
    assert!(
        kept == saved[best - 1],
        "model_best is epoch {best}'s weights"
    );

    // A rate too small to change any prediction: no epoch beats the first, so the run stops
    // two epochs after its best.
    let still = TrainConfig {
        lr: 1e-12,
        early_stop: Some(2),
        ..config(8)
    };
    let out = dir.path().join("still");
    let summary = run(&job(Architecture::SimpleCnn, still, &out, 96, 64)).unwrap();
    let (best, _) = cv_train::selection::best_epoch(&summary.records).unwrap();
    assert_eq!(summary.epochs_completed, best + 2, "{:?}", summary.records);
    assert!(summary.epochs_completed < 8);
    assert!(out.join(MODEL_BEST_FILE).is_file() && out.join(REPORT_FILE).is_file());
}

#[test]
fn accumulated_steps_equal_one_step_on_the_large_batch() {
    // The small CNN has no BatchNorm, so four batches of 8 accumulated are one batch of 32:
    // same data order, learning rates and weights, up to float rounding. 70 images make a
    // short last step (6 images) on both sides.
    let dir = tempfile::tempdir().unwrap();
    let base = TrainConfig {
        augment: Augment::None,
        ..config(2)
    };
    let large = TrainConfig {
        batch_size: 32,
        ..base.clone()
    };
    let accumulated = TrainConfig {
        batch_size: 8,
        accum_steps: 4,
        ..base
    };
    let (a, b) = (dir.path().join("large"), dir.path().join("accum"));
    let one = run(&job(Architecture::SimpleCnn, large, &a, 70, 16)).unwrap();
    let four = run(&job(Architecture::SimpleCnn, accumulated, &b, 70, 16)).unwrap();
    assert_eq!(one.global_step, 6);
    assert_eq!(four.global_step, 6);
    let (wa, wb) = (weights(&a), weights(&b));
    let start = initial(Architecture::SimpleCnn, 7);
    for (k, t) in &wa {
        let moved = max_diff(t, &start[k]);
        let diff = max_diff(t, &wb[k]);
        assert!(moved > 1e-4, "{k} trained");
        assert!(
            diff < 1e-5 + 1e-3 * moved,
            "{k}: {diff} apart after moving {moved}"
        );
    }
    let err = run(&job(
        Architecture::SimpleCnn,
        TrainConfig {
            accum_steps: 0,
            ..config(1)
        },
        &dir.path().join("zero"),
        16,
        8,
    ))
    .unwrap_err();
    assert!(err.to_string().contains("accum_steps"), "{err}");
}

#[test]
fn val_split_is_held_out_evaluated_and_selects() {
    let dir = tempfile::tempdir().unwrap();
    let c = TrainConfig {
        val_split: Some(0.25),
        ..config(3)
    };
    let summary = run(&job(Architecture::SimpleCnn, c, dir.path(), 192, 64)).unwrap();
    // 48 of the 192 training images (12 per class) are held out: each epoch trains on 144
    // and evaluates 64 test and 48 validation images.
    assert_eq!(summary.backbone_images, 3 * (144 + 64 + 48));
    assert_eq!(summary.global_step, 3 * 144 / 16);
    for r in &summary.records {
        assert!(
            r.val_acc.is_some() && r.val_loss.is_some() && r.test_acc.is_some(),
            "{r:?}"
        );
    }
    let (best, acc) = cv_train::selection::best_epoch(&summary.records).unwrap();
    assert_eq!(
        Some(acc),
        summary.records[best - 1].val_acc,
        "selection on validation"
    );
    let svg = std::fs::read_to_string(dir.path().join("curves.svg")).unwrap();
    assert!(svg.contains("val accuracy") && svg.contains("val loss"));
    let cfg = CheckpointConfig::read(dir.path()).unwrap();
    assert_eq!(cfg.train.val_split, Some(0.25));
}

/// The report of a ResNet-18 on images that are not square (no eval transform: the model
/// sees 48x32): each tile keeps the image's width and height.
#[test]
fn report_tiles_keep_the_shape_of_non_square_images() {
    let varmap = VarMap::new();
    let model = Model::new(
        Architecture::ResNet18,
        CLASSES,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    cv_models::init::initialise(&varmap, Architecture::ResNet18, 3).unwrap();
    let mut rng = SplitMix(9);
    let data = Dataset {
        images: (0..3)
            .map(|c| cv_testkit::folder::class_image(c, 48, 32, &mut rng))
            .collect(),
        labels: vec![0, 1, 2],
        classes: (0..CLASSES).map(|c| format!("class{c}")).collect(),
    };
    let loader = cv_data::Loader::new(
        std::sync::Arc::new(data),
        cv_data::Pipeline::none(
            cv_data::transforms::CIFAR10_MEAN,
            cv_data::transforms::CIFAR10_STD,
        ),
        cv_data::LoaderConfig::default(),
        Device::Cpu,
    )
    .unwrap();
    let evaluation = cv_train::metrics::evaluate_samples(&model, &loader).unwrap();
    let html = cv_train::run_report::render_report(&cv_train::run_report::ReportInput {
        title: "non-square",
        model: &model,
        test: &loader,
        evaluation: &evaluation,
        records: &[],
        config: None,
        top_losses: 2,
    })
    .unwrap();
    use base64::Engine;
    let sizes: Vec<(u32, u32)> = html
        .split("src=\"data:image/png;base64,")
        .skip(1)
        .map(|t| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&t[..t.find('"').unwrap()])
                .unwrap();
            image::load_from_memory(&bytes)
                .unwrap()
                .to_rgb8()
                .dimensions()
        })
        .collect();
    assert_eq!(sizes, vec![(48, 32); 4]);
    assert!(html.contains("No epochs recorded") && html.contains("No config.json"));
}

/// Records one tensor of the raw weights after every optimizer step.
struct RawWeights {
    key: &'static str,
    seen: Vec<Tensor>,
}

impl Hook for RawWeights {
    fn after_step(
        &mut self,
        _out: &StepOutput,
        vars: &VarMap,
        _ctx: &StepContext,
    ) -> cv_train::Result<()> {
        let all = cv_models::state::state_dict(vars)?;
        self.seen.push(all[self.key].clone());
        Ok(())
    }
}

/// `--ema-decay`: the average follows its recurrence from the starting weights, is what each
/// epoch evaluates and `model.safetensors` holds, while `train_state` keeps the raw weights
/// and the average, so a resume continues both exactly.
#[test]
fn ema_is_evaluated_published_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let c = TrainConfig {
        ema_decay: Some(0.8),
        batch_size: 8,
        lr: 0.05,
        ..config(3)
    };
    let mut raw = RawWeights {
        key: "conv1.weight",
        seen: vec![],
    };
    let full = run_with_hooks(
        &job(Architecture::SimpleCnn, c.clone(), &a, 64, 32),
        &mut [&mut raw],
    )
    .unwrap();
    assert_eq!(raw.seen.len(), full.global_step);
    let mut expect = initial(Architecture::SimpleCnn, 7)["conv1.weight"].clone();
    for (t, w) in raw.seen.iter().enumerate() {
        // timm's warm-up: min(0.8, (1 + t) / (10 + t)).
        let d = 0.8f64.min((1.0 + t as f64) / (10.0 + t as f64));
        expect = ((expect * d).unwrap() + (w * (1.0 - d)).unwrap()).unwrap();
    }
    let published = weights(&a);
    let d = max_diff(&published["conv1.weight"], &expect);
    assert!(d < 1e-5, "model.safetensors is the average: off by {d}");
    let state = TrainState::read(&a, &Device::Cpu).unwrap().unwrap();
    let last = raw.seen.last().unwrap();
    assert!(
        max_diff(&state.model["conv1.weight"], last) < 1e-7,
        "train_state keeps the raw weights"
    );
    let apart = max_diff(last, &expect);
    eprintln!(
        "raw and average {apart} apart after {} steps",
        raw.seen.len()
    );
    assert!(
        apart > 1e-3,
        "the average differs from the raw weights: {apart}"
    );
    assert!(max_diff(&state.ema["conv1.weight"], &expect) < 1e-5);

    // The recorded test accuracy and loss are those of the published weights.
    let varmap = VarMap::new();
    let model = Model::new(
        Architecture::SimpleCnn,
        CLASSES,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    cv_models::state::load_state_dict(&varmap, &published).unwrap();
    let test = std::sync::Arc::new(splits(64, 32).test);
    let eval_tf = cv_train::trainer::eval_pipeline(
        32,
        &test,
        cv_data::transforms::CIFAR10_MEAN,
        cv_data::transforms::CIFAR10_STD,
    );
    let loader = cv_data::Loader::new(
        test,
        eval_tf,
        cv_data::LoaderConfig {
            batch_size: 16,
            shuffle: false,
            prefetch: 0,
            ..Default::default()
        },
        Device::Cpu,
    )
    .unwrap();
    let report = cv_train::metrics::evaluate(&model, &loader).unwrap();
    let last_record = full.records.last().unwrap();
    assert_eq!(Some(report.accuracy), last_record.test_acc);
    assert!((report.loss - last_record.test_loss.unwrap()).abs() < 1e-6);

    // Interrupted after the first epoch and resumed: the same average.
    run_with_hooks(
        &job(Architecture::SimpleCnn, c.clone(), &b, 64, 32),
        &mut [&mut on_epoch(|_| Flow::Stop)],
    )
    .unwrap();
    let mut resumed_job = job(Architecture::SimpleCnn, c, &b, 64, 32);
    resumed_job.resume = true;
    let resumed = run(&resumed_job).unwrap();
    assert_eq!(
        resumed.records.last().unwrap().test_acc,
        last_record.test_acc
    );
    assert_same_weights(&a, &b);
    let cfg = CheckpointConfig::read(&a).unwrap();
    assert_eq!(cfg.train.ema_decay, Some(0.8));
}

/// The policies reach the training pipeline in torchvision's order and are recorded.
#[test]
fn augmentation_policies_train_and_are_recorded_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let c = TrainConfig {
        color_jitter: Some([0.4, 0.4, 0.4, 0.1]),
        auto_augment: Some(cv_train::config::AutoAugmentKind::Rand),
        randaugment_ops: 3,
        randaugment_magnitude: 5,
        random_erasing: Some(0.25),
        ..config(2)
    };
    let summary = run(&job(Architecture::SimpleCnn, c.clone(), dir.path(), 64, 16)).unwrap();
    assert!(summary.records.iter().all(|r| r.train_loss.is_finite()));
    let cfg = CheckpointConfig::read(dir.path()).unwrap();
    let names: Vec<String> = cfg
        .train_transforms
        .transforms
        .iter()
        .map(|t| {
            serde_json::to_value(t).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "random_crop",
            "random_horizontal_flip",
            "color_jitter",
            "rand_augment",
            "random_erasing"
        ]
    );
    assert_eq!(
        cfg.train_transforms.transforms[3],
        cv_data::Transform::RandAugment {
            num_ops: 3,
            magnitude: 5,
            num_magnitude_bins: 31
        }
    );
    // The same recipe gives the same run.
    let again = tempfile::tempdir().unwrap();
    run(&job(
        Architecture::SimpleCnn,
        c.clone(),
        again.path(),
        64,
        16,
    ))
    .unwrap();
    assert_same_weights(dir.path(), again.path());
    // A probe trains on cached eval features: refused, naming the flag.
    let probe = TrainConfig {
        mode: TrainMode::Probe,
        ..c
    };
    let err = run(&job(
        Architecture::ResNet18,
        probe,
        &dir.path().join("p"),
        8,
        4,
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("color_jitter") && err.contains("probe"),
        "{err}"
    );
}

/// A teacher checkpoint folder at `dir`: `tensors` with a card for this file's classes.
fn teacher_folder(dir: &Path, arch: Architecture, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(dir).unwrap();
    cv_train::atomic::write_safetensors(&dir.join(MODEL_FILE), tensors).unwrap();
    cv_train::checkpoint::ModelCard {
        architecture: arch,
        classes: (0..CLASSES).map(|c| format!("class{c}")).collect(),
        image_size: 32,
        eval_transforms: cv_data::transforms::Pipeline::cifar_eval(),
        weights_from: None,
        quantization: None,
    }
    .write(dir)
    .unwrap();
}

fn distill(teacher: &Path, temperature: f64, alpha: f64) -> cv_train::config::Distill {
    cv_train::config::Distill {
        teacher: teacher.to_path_buf(),
        temperature,
        alpha,
    }
}

/// With `alpha = 1` the loss is the distillation term alone; a teacher equal to the student's
/// initial weights leaves it 0 at every step (the same logits), so nothing moves. The recipe
/// records the teacher.
#[test]
fn distilling_from_an_identical_teacher_with_alpha_one_leaves_nothing_to_learn() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("teacher");
    let start = initial(Architecture::SimpleCnn, 7);
    teacher_folder(&teacher, Architecture::SimpleCnn, &start);
    let c = TrainConfig {
        weight_decay: 0.0,
        distill: Some(distill(&teacher, 4.0, 1.0)),
        ..config(1)
    };
    let out = dir.path().join("student");
    let mut log = LossLog::default();
    run_with_hooks(
        &job(Architecture::SimpleCnn, c, &out, 48, 16),
        &mut [&mut log],
    )
    .unwrap();
    assert_eq!(log.steps.len(), 3);
    // Zero up to rounding: the student's train-mode forward and the teacher's eval-mode
    // forward may take different convolution kernels.
    assert!(
        log.steps.iter().all(|s| s.2.abs() < 1e-6),
        "{:?}",
        log.steps
    );
    let end = weights(&out);
    for (k, t) in &start {
        let moved = max_diff(t, &end[k]);
        assert!(moved < 1e-6, "{k} moved by {moved}");
    }
    let cfg = CheckpointConfig::read(&out).unwrap();
    assert_eq!(cfg.train.distill, Some(distill(&teacher, 4.0, 1.0)));
}

/// A trained teacher changes the student's training (its loss and weights differ from
/// training alone with the same seed) and the student learns the task.
#[test]
fn a_trained_teacher_changes_the_students_training_and_it_learns() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("teacher");
    let trained = run(&job(Architecture::SimpleCnn, config(4), &teacher, 192, 64)).unwrap();
    let teacher_acc = trained.final_eval.unwrap().accuracy;
    assert!(teacher_acc >= 0.7, "teacher accuracy {teacher_acc}");
    let (alone, taught) = (dir.path().join("alone"), dir.path().join("taught"));
    let (mut plain, mut kd) = (LossLog::default(), LossLog::default());
    run_with_hooks(
        &job(Architecture::SimpleCnn, config(4), &alone, 192, 64),
        &mut [&mut plain],
    )
    .unwrap();
    let c = TrainConfig {
        distill: Some(distill(&teacher, 2.0, 0.5)),
        ..config(4)
    };
    let summary = run_with_hooks(
        &job(Architecture::SimpleCnn, c, &taught, 192, 64),
        &mut [&mut kd],
    )
    .unwrap();
    let acc = summary.final_eval.unwrap().accuracy;
    eprintln!(
        "teacher {teacher_acc}, distilled {acc}: {:?}",
        summary.records
    );
    assert!(acc >= 0.5, "distilled accuracy {acc} (chance 0.25)");
    assert!((plain.steps[0].2 - kd.steps[0].2).abs() > 1e-3);
    let (a, b) = (weights(&alone), weights(&taught));
    assert!(max_diff(&a["conv1.weight"], &b["conv1.weight"]) > 1e-4);
}

/// A teacher trained on other classes, or none at that path, is refused before the run
/// folder is made.
#[test]
fn a_teacher_with_other_classes_or_none_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("teacher");
    teacher_folder(
        &teacher,
        Architecture::SimpleCnn,
        &initial(Architecture::SimpleCnn, 1),
    );
    let mut card = cv_train::checkpoint::ModelCard::read(&teacher).unwrap();
    card.classes.swap(0, 1);
    card.write(&teacher).unwrap();
    for (path, want) in [
        (teacher.clone(), "not the training data's 4 classes"),
        (dir.path().join("nowhere"), "nowhere"),
    ] {
        let out = dir.path().join("student");
        let c = TrainConfig {
            distill: Some(distill(&path, 2.0, 0.5)),
            ..config(1)
        };
        let err = run(&job(Architecture::SimpleCnn, c, &out, 32, 16))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
        assert!(!out.exists(), "{err}");
    }
}
