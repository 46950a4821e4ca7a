//! Command-line flags (clap derive). Defaults that belong to a training recipe live in
//! `cv_train::config`, not here: a flag left out means "the recipe's value".

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cv_data::DataSource;

/// An error in what the user typed (exit code 2), as opposed to a failure while working (1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Bail out with a usage error (exit code 2).
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

/// Transfer learning for computer vision in pure Rust: CIFAR-10, image folders, a small CNN
/// and ImageNet-pretrained ResNet-18.
#[derive(Debug, Parser)]
#[command(
    name = "cv",
    version,
    propagate_version = true,
    after_help = "Start with:\n  cargo xtask fetch-data\n  cv finetune"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether log lines below warnings should be hidden.
    pub fn quiet_logs(&self) -> bool {
        match &self.command {
            Command::Train(a) => a.common.quiet,
            Command::Finetune(a) => a.common.quiet,
            Command::Distill(a) => a.common.quiet,
            Command::Eval(a) => a.json,
            Command::Predict(a) => a.json,
            Command::Explain(a) => a.predict.json,
            Command::Report(_) => false,
            Command::Export(_) => false,
            Command::Quantize(_) => false,
            Command::Data(DataCommand::Inspect(a)) => a.json,
            Command::Weights(WeightsCommand::List(a)) => a.json,
            Command::Weights(WeightsCommand::Fetch(_)) => false,
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a model from scratch (the tutorial's first half).
    #[command(
        after_help = "Examples:\n  cv train --model cnn --data data/cifar-10-batches-bin --epochs 10 --out runs/cnn\n  cv train --config runs/cnn --out runs/cnn-again     # replay a run from its config.json"
    )]
    Train(TrainArgs),
    /// Fine-tune pretrained weights on your data (the tutorial's second half).
    #[command(
        after_help = "Examples:\n  cv finetune                                   # resnet18.tv_in1k on CIFAR-10, recipe defaults\n  cv finetune --mode full --epochs 3 --image-size 64\n  cv finetune --weights my.safetensors --data flowers/ --mode head\n  cv finetune --config runs/finetune --epochs 20 --out runs/longer   # replay, one value changed"
    )]
    Finetune(FinetuneArgs),
    /// Train a small model from scratch to imitate a trained one (knowledge distillation).
    #[command(
        after_help = "Examples:\n  cv distill --teacher runs/finetune --student cnn --data data/cifar-10-batches-bin --out runs/distill\n  cv distill --teacher runs/finetune --temperature 2 --alpha 0.5 --epochs 20"
    )]
    Distill(DistillArgs),
    /// Evaluate a checkpoint: loss, top-1, top-5, per-class accuracy, confusion matrix.
    #[command(
        after_help = "Example:\n  cv eval --checkpoint runs/finetune --data data/cifar-10-batches-bin --json"
    )]
    Eval(EvalArgs),
    /// Classify image files with a checkpoint or pretrained weights.
    #[command(
        after_help = "Examples:\n  cv predict --checkpoint runs/finetune cat.png dog.jpg\n  cv predict --weights resnet18.tv_in1k --top-k 5 --json photo.jpg"
    )]
    Predict(PredictArgs),
    /// Where the model looks: Grad-CAM, Grad-CAM++ or CAM heatmaps over image files.
    #[command(
        after_help = "Examples:\n  cv explain --checkpoint runs/finetune cat.png dog.jpg --out cams/\n  cv explain --weights resnet18.tv_in1k --method gradcam++ --class 281 --layer layer3 --json photo.jpg\n\nFor each image it writes, into --out: NAME.cam.png (the heatmap over the image as the model\nsaw it), NAME.cam.npy (the map at the layer's resolution) and NAME.cam_upsampled.npy (at the\ninput's, scaled to [0, 1]); numpy.load reads both."
    )]
    Explain(ExplainArgs),
    /// Write a run's report.html: curves, confusion heatmap, per-class accuracy, the most
    /// confused pairs, the highest-loss test images with Grad-CAM, the recipe.
    #[command(
        after_help = "Examples:\n  cv report runs/finetune                  # evaluates on the data the run recorded\n  cv report runs/cnn --data other-photos/ --out other.html\n\nOne self-contained HTML file (inline SVG and PNG, no script, nothing fetched): open it in\nany browser. cv train and cv finetune write one at the end of every run; cv eval --report\nDIR writes one for any checkpoint and data set."
    )]
    Report(ReportArgs),
    /// Write a checkpoint's weights for use outside cv: safetensors with torchvision names,
    /// in f32, f16 or bf16, optionally with BatchNorm folded.
    #[command(
        after_help = "Examples:\n  cv export --checkpoint runs/finetune --dtype f16 --out model-f16.safetensors\n  cv export --weights resnet18.tv_in1k --fold-bn --out resnet18-folded.safetensors\n\nf16/bf16 files are half the size; torchvision loads them with\nmodel.load_state_dict(safetensors.torch.load_file(F)) after model.half() or .bfloat16(),\nor converts them with {k: v.float() for k, v in ...}. --fold-bn files have no BatchNorm keys\n(each convolution gets a bias): for inference code that builds the network without it."
    )]
    Export(ExportArgs),
    /// Post-training int8 quantization: a new checkpoint folder that cv eval and cv predict run.
    #[command(
        after_help = "Examples:\n  cv quantize --checkpoint runs/finetune --data data/cifar-10-batches-bin --calibration 512 --out runs/finetune-int8\n  cv eval --checkpoint runs/finetune-int8 --data data/cifar-10-batches-bin\n\nWeights: i8, symmetric per output channel; activations: u8, one scale and zero point per tensor,\nranges from --calibration images of the training split (eval transforms); BatchNorm folded,\nReLU and the residual add fused, the head in f32. Runs on the CPU (AVX512-VNNI, AVX-VNNI or AVX2)."
    )]
    Quantize(QuantizeArgs),
    /// Look at datasets.
    #[command(subcommand)]
    Data(DataCommand),
    /// Pretrained weights: list the registry, download into the Hugging Face cache.
    #[command(subcommand)]
    Weights(WeightsCommand),
}

/// Which network to train from scratch.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModelArg {
    /// The tutorial's small CNN (32x32 input only).
    Cnn,
    /// ResNet-18 (any input from 32x32 up).
    Resnet18,
}

/// Which parameters fine-tuning trains.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// Everything trains.
    Full,
    /// Backbone frozen (BatchNorm in eval mode), only the new head trains.
    Head,
    /// Features computed once with the frozen backbone, then a linear head on the cache.
    Probe,
}

/// Optimizer choice.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OptimizerArg {
    /// SGD with momentum (PyTorch semantics).
    Sgd,
    /// AdamW (decoupled weight decay).
    Adamw,
}

/// Learning-rate schedule choice.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScheduleArg {
    /// The same rate throughout.
    Constant,
    /// Multiply by 0.1 every third of the epochs.
    Step,
    /// Linear warm-up, then cosine decay to zero.
    Cosine,
    /// One-cycle (PyTorch's OneCycleLR, cosine annealing).
    Onecycle,
}

/// Augmentation recipe for training batches.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AugmentArg {
    /// Random crop with 4 pixels of padding, horizontal flip.
    Cifar,
    /// RandomResizedCrop and horizontal flip.
    Imagenet,
    /// Resize and normalise only.
    None,
}

/// `--auto-augment` (torchvision reference scripts' names are accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AutoAugmentArg {
    /// TrivialAugmentWide: one operation at a random magnitude.
    #[value(alias = "ta_wide")]
    Trivial,
    /// RandAugment: --randaugment-ops operations at --randaugment-magnitude.
    #[value(alias = "ra")]
    Rand,
    /// AutoAugment with the ImageNet policy.
    #[value(alias = "imagenet")]
    Auto,
}

/// `--color-jitter B,C,S,H`: four non-negative strengths.
fn parse_jitter(s: &str) -> Result<[f64; 4], String> {
    let values: Vec<f64> = s
        .split(',')
        .map(|v| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}")))
        .collect::<Result<_, _>>()?;
    <[f64; 4]>::try_from(values.as_slice()).map_err(|_| {
        format!(
            "expected four strengths B,C,S,H (e.g. 0.4,0.4,0.4,0.1), got {}",
            values.len()
        )
    })
}

/// `--precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    /// Everything in f32.
    F32,
    /// bf16 convolutions and matrix products with f32 sums and f32 weights, as PyTorch's
    /// autocast (CPU with AMX-BF16 or AVX512-BF16; CUDA for training).
    Bf16,
}

impl From<PrecisionArg> for cv_train::config::Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => cv_train::config::Precision::F32,
            PrecisionArg::Bf16 => cv_train::config::Precision::Bf16,
        }
    }
}

/// The weights `cv finetune` starts from when `--weights` is not given.
pub const DEFAULT_WEIGHTS: &str = "resnet18.tv_in1k";

/// Where `--data` looks when it is not given (nor recorded in a replayed config).
pub const DEFAULT_DATA: &str = "data/cifar-10-batches-bin";

/// Flags shared by `train` and `finetune`. A flag left out takes the recipe's default, or with
/// `--config` the replayed run's value.
#[derive(Debug, Args)]
pub struct CommonTrainArgs {
    /// Replay a run: its recipe, data, model and starting weights from its config.json (a run
    /// folder or the file). Flags given beside it override single values.
    #[arg(long, value_name = "RUN/config.json")]
    pub config: Option<PathBuf>,
    /// A CIFAR-10 batch folder (or its parent) or an image-folder root with train/ and test/
    /// [default: data/cifar-10-batches-bin].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Passes over the training split.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per optimizer step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (of the head, when fine-tuning).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Optimizer.
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerArg>,
    /// SGD momentum.
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Weight decay (never applied to BatchNorm and bias parameters).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Use Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    /// Learning-rate schedule, applied per step.
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Label smoothing of the cross-entropy loss (0 to 1).
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// MixUp with lam ~ Beta(ALPHA, ALPHA) (torchvision's MixUp; 0.2 is common).
    #[arg(long, value_name = "ALPHA")]
    pub mixup: Option<f64>,
    /// CutMix with lam ~ Beta(ALPHA, ALPHA) (1.0 is common); with --mixup, one of the two per
    /// batch, each with probability 1/2.
    #[arg(long, value_name = "ALPHA")]
    pub cutmix: Option<f64>,
    /// Hold out this stratified, seeded fraction of the training images as a validation
    /// split (never the test split): evaluated each epoch, used by model selection and
    /// --early-stop.
    #[arg(long, value_name = "F")]
    pub val_split: Option<f64>,
    /// Batches per optimizer step: an effective batch N times --batch-size, for when that
    /// does not fit in memory (BatchNorm still normalises each batch alone).
    #[arg(long, value_name = "N")]
    pub accum_steps: Option<usize>,
    /// Stop after N epochs without a better validation accuracy (test accuracy without
    /// --val-split); model_best.safetensors keeps the best epoch's weights either way.
    #[arg(long, value_name = "N")]
    pub early_stop: Option<usize>,
    /// Keep an exponential moving average of the weights, decay D per optimizer step (timm's
    /// ModelEmaV3 with warm-up; e.g. 0.999): each epoch evaluates it and model.safetensors holds it, the
    /// raw weights stay in train_state.safetensors for --resume.
    #[arg(long, value_name = "D")]
    pub ema_decay: Option<f64>,
    /// Side of the square images the model sees (CIFAR's 32x32 are resized to it).
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Augmentation of training batches.
    #[arg(long, value_enum)]
    pub augment: Option<AugmentArg>,
    /// ColorJitter after the crop and flip: brightness, contrast, saturation and hue strengths
    /// (torchvision's ColorJitter, e.g. 0.4,0.4,0.4,0.1).
    #[arg(long, value_name = "B,C,S,H", value_parser = parse_jitter)]
    pub color_jitter: Option<[f64; 4]>,
    /// An automatic augmentation policy per image, after the crop, flip and colour jitter
    /// (torchvision's TrivialAugmentWide, RandAugment, AutoAugment).
    #[arg(long, value_enum)]
    pub auto_augment: Option<AutoAugmentArg>,
    /// RandAugment's operations per image [default: 2].
    #[arg(long, value_name = "N")]
    pub randaugment_ops: Option<usize>,
    /// RandAugment's magnitude, a bin of 0..=30 [default: 9].
    #[arg(long, value_name = "M")]
    pub randaugment_magnitude: Option<usize>,
    /// RandomErasing with probability P: a rectangle of 2-33% of the normalised image set to
    /// 0, last (torchvision's RandomErasing).
    #[arg(long, value_name = "P")]
    pub random_erasing: Option<f64>,
    /// Seed of initialisation, shuffling and augmentation.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Device: cpu, cuda, cuda:N or metal (falls back to cpu with a warning).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Training arithmetic: f32, or bf16 mixed precision (bf16 convolutions and matrix
    /// products, f32 weights, BatchNorm and loss; CPU with AMX-BF16/AVX512-BF16, or CUDA).
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// Output folder for model.safetensors, config.json, metrics.jsonl, curves.png/.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in --out from its last completed epoch.
    #[arg(long)]
    pub resume: bool,
    /// No progress bars or info lines (for scripts).
    #[arg(long)]
    pub quiet: bool,
    /// Skip unreadable images in an image folder instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Use at most this many training images (quick experiments; a seeded, class-balanced subset).
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Use at most this many test images (likewise).
    #[arg(long)]
    pub limit_test: Option<usize>,
    #[command(flatten)]
    pub split: SplitArgs,
}

/// The test split of `ROOT/<class>/*` folders, which have none of their own.
#[derive(Debug, Args)]
pub struct SplitArgs {
    /// Hold out this stratified fraction of every class of a ROOT/CLASS/* folder as the
    /// test split (such folders have no train/ and test/).
    #[arg(long, value_name = "F")]
    pub test_split: Option<f64>,
    /// Seed of the --test-split draw (apart from --seed, so runs share one test set)
    /// [default: 0].
    #[arg(long, value_name = "S")]
    pub split_seed: Option<u64>,
}

impl SplitArgs {
    /// `source` with these flags applied over what it records.
    pub fn apply(&self, source: DataSource) -> DataSource {
        DataSource {
            test_split: self.test_split.or(source.test_split),
            split_seed: self.split_seed.unwrap_or(source.split_seed),
            ..source
        }
    }
}

/// `cv train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Network to train [default: cnn].
    #[arg(long, value_enum)]
    pub model: Option<ModelArg>,
    #[command(flatten)]
    pub common: CommonTrainArgs,
}

/// `cv distill`.
#[derive(Debug, Args)]
pub struct DistillArgs {
    /// The teacher: a checkpoint folder written by train or finetune, trained on the same
    /// classes. It runs in eval mode and never trains.
    #[arg(long)]
    pub teacher: PathBuf,
    /// The network trained from scratch [default: cnn].
    #[arg(long, value_enum)]
    pub student: Option<ModelArg>,
    /// The temperature T that softens both networks' outputs.
    #[arg(long, default_value_t = 4.0)]
    pub temperature: f64,
    /// The weight of the distillation term, in [0, 1]; the labels' loss gets 1 - alpha.
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    #[command(flatten)]
    pub common: CommonTrainArgs,
}

/// `cv finetune`.
#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// A registry name (see `cv weights list`), a .safetensors file or a checkpoint folder
    /// [default: resnet18.tv_in1k].
    #[arg(long)]
    pub weights: Option<String>,
    /// What trains.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Gradual unfreezing: train the head alone for N epochs, then everything.
    #[arg(long)]
    pub unfreeze_after: Option<usize>,
    /// Learning rate of the pretrained backbone relative to the head's (e.g. 0.1).
    #[arg(long)]
    pub backbone_lr_scale: Option<f64>,
    /// Use the Hugging Face cache only (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Input normalisation mean (R,G,B) for weights without a config.json.
    #[arg(long, value_delimiter = ',', num_args = 3)]
    pub mean: Option<Vec<f32>>,
    /// Input normalisation std (R,G,B) for weights without a config.json.
    #[arg(long, value_delimiter = ',', num_args = 3)]
    pub std: Option<Vec<f32>>,
    #[command(flatten)]
    pub common: CommonTrainArgs,
}

/// `cv eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A checkpoint folder written by train/finetune.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The dataset to evaluate on (its test split).
    #[arg(long, default_value = "data/cifar-10-batches-bin")]
    pub data: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How the test split is read and run.
    #[command(flatten)]
    pub pass: EvalPassArgs,
    /// Arithmetic of the forward pass: f32, or bf16 (CPU with AMX-BF16 or AVX512-BF16).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
    /// Also write DIR/report.html (the page `cv report` writes) for this data.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Highest-loss images the report shows.
    #[arg(long, default_value_t = cv_train::run_report::DEFAULT_TOP_LOSSES)]
    pub top_losses: usize,
}

/// `cv report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A run folder written by train/finetune.
    pub run: PathBuf,
    /// Evaluate on this dataset's test split instead of the data the run recorded.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where to write the page [default: RUN/report.html].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Highest-loss images the report shows.
    #[arg(long, default_value_t = cv_train::run_report::DEFAULT_TOP_LOSSES)]
    pub top_losses: usize,
    /// How the test split is read and run.
    #[command(flatten)]
    pub pass: EvalPassArgs,
}

/// How `cv eval` and `cv report` read and run a test split.
#[derive(Debug, Args)]
pub struct EvalPassArgs {
    /// Images per forward pass.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Device: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Skip unreadable images in an image folder instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    #[command(flatten)]
    pub split: SplitArgs,
}

/// `cv predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A checkpoint folder written by train/finetune.
    #[arg(long, conflicts_with = "weights", required_unless_present = "weights")]
    pub checkpoint: Option<PathBuf>,
    /// A registry name, a .safetensors file or a checkpoint folder.
    #[arg(long)]
    pub weights: Option<String>,
    /// Image files (png, jpeg, bmp, webp, gif).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Device: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Use the Hugging Face cache only (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// Input normalisation mean (R,G,B) for weights without a config.json.
    #[arg(long, value_delimiter = ',', num_args = 3)]
    pub mean: Option<Vec<f32>>,
    /// Input normalisation std (R,G,B) for weights without a config.json.
    #[arg(long, value_delimiter = ',', num_args = 3)]
    pub std: Option<Vec<f32>>,
    /// Arithmetic of the forward pass: f32, or bf16 (CPU with AMX-BF16 or AVX512-BF16).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
}

/// The file format `cv export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormatArg {
    /// safetensors with torchvision's parameter names.
    Safetensors,
    /// ONNX (opset 17), f32, BatchNorm folded, dynamic batch; for onnxruntime, `ort`, tract.
    Onnx,
}

/// `--dtype` of `cv export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportDtypeArg {
    /// 32-bit floats, as trained.
    F32,
    /// IEEE half precision (half the file).
    F16,
    /// bfloat16 (half the file).
    Bf16,
}

impl From<ExportDtypeArg> for cv_weights::ExportDtype {
    fn from(d: ExportDtypeArg) -> Self {
        match d {
            ExportDtypeArg::F32 => cv_weights::ExportDtype::F32,
            ExportDtypeArg::F16 => cv_weights::ExportDtype::F16,
            ExportDtypeArg::Bf16 => cv_weights::ExportDtype::Bf16,
        }
    }
}

/// `cv export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A checkpoint folder written by train/finetune.
    #[arg(long, conflicts_with = "weights", required_unless_present = "weights")]
    pub checkpoint: Option<PathBuf>,
    /// A registry name, a .safetensors file or a checkpoint folder.
    #[arg(long)]
    pub weights: Option<String>,
    /// The file format.
    #[arg(long, value_enum, default_value = "safetensors")]
    pub format: ExportFormatArg,
    /// The float type of the written weights (safetensors only; ONNX is f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: ExportDtypeArg,
    /// Fold every BatchNorm into the convolution before it (eval-mode weights, no BN keys;
    /// ONNX is always folded).
    #[arg(long)]
    pub fold_bn: bool,
    /// The file to write (replaced atomically; never the exported file itself).
    #[arg(long)]
    pub out: PathBuf,
    /// Use the Hugging Face cache only (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
}

/// How `cv quantize` takes activation ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ObserverArg {
    /// Smallest to largest value seen (PyTorch's MinMaxObserver).
    Minmax,
    /// The --percentile-th and (100 - p)-th percentiles: clips rare outliers.
    Percentile,
}

/// `cv quantize`.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// A checkpoint folder written by train/finetune.
    #[arg(long, conflicts_with = "weights", required_unless_present = "weights")]
    pub checkpoint: Option<PathBuf>,
    /// A registry name, a .safetensors file or a checkpoint folder.
    #[arg(long)]
    pub weights: Option<String>,
    /// The dataset whose training split calibrates (its classes must be the weights').
    #[arg(long, default_value = "data/cifar-10-batches-bin")]
    pub data: PathBuf,
    /// Calibration images (a seeded random subset of the training split).
    #[arg(long, default_value_t = 512)]
    pub calibration: usize,
    /// How activation ranges are taken.
    #[arg(long, value_enum, default_value = "minmax")]
    pub observer: ObserverArg,
    /// The percentile of --observer percentile, in (50, 100].
    #[arg(long, default_value_t = 99.99)]
    pub percentile: f64,
    /// Images per calibration batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Which calibration images (the shuffle's seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The new checkpoint folder (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Use the Hugging Face cache only (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `cv explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The model, the images and how they are read, as for `cv predict`.
    #[command(flatten)]
    pub predict: PredictArgs,
    /// How the layer's channels are weighted: gradcam, gradcam++ or cam.
    #[arg(long, default_value = "gradcam")]
    pub method: String,
    /// The class to explain, by index or name (default: each image's top-1).
    #[arg(long)]
    pub class: Option<String>,
    /// The layer (torchvision's module name; default: layer4 for ResNet-18, conv2 for the CNN).
    #[arg(long)]
    pub layer: Option<String>,
    /// Folder for the heatmaps (created if missing).
    #[arg(long, default_value = "explain")]
    pub out: PathBuf,
}

/// `cv data ...`.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// The format found, images per split and class, and an integrity check.
    #[command(after_help = "Example:\n  cv data inspect data/cifar-10-batches-bin --json")]
    Inspect(InspectArgs),
}

/// `cv data inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A CIFAR-10 batch folder (or its parent) or an image-folder root.
    pub dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `cv weights ...`.
#[derive(Debug, Subcommand)]
pub enum WeightsCommand {
    /// Name, architecture, top-1, size and whether it is cached.
    #[command(after_help = "Example:\n  cv weights list")]
    List(ListArgs),
    /// Download into the Hugging Face cache and print the local path.
    #[command(after_help = "Example:\n  cv weights fetch resnet18.tv_in1k")]
    Fetch(FetchArgs),
}

/// `cv weights list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `cv weights fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// A registry name.
    pub name: String,
    /// Use the cache only (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
    /// No progress bar (also HF_HUB_DISABLE_PROGRESS_BARS=1).
    #[arg(long)]
    pub quiet: bool,
    /// Attempts after the first on connection errors, timeouts and 5xx/429 answers; a broken
    /// download resumes where it stopped (timeouts: HF_HUB_ETAG_TIMEOUT,
    /// HF_HUB_DOWNLOAD_TIMEOUT, 10 s each by default).
    #[arg(long, default_value_t = cv_weights::hub::DEFAULT_RETRIES)]
    pub retries: usize,
}

/// Three comma-separated numbers as an RGB triple.
pub fn rgb(v: &Option<Vec<f32>>, flag: &str) -> anyhow::Result<Option<[f32; 3]>> {
    match v {
        None => Ok(None),
        Some(v) if v.len() == 3 => Ok(Some([v[0], v[1], v[2]])),
        Some(v) => Err(usage(format!(
            "--{flag} takes 3 numbers (R,G,B), got {}",
            v.len()
        ))),
    }
}
