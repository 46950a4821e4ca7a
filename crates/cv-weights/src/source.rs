//! Where weights come from: a registry name (downloaded through the hub cache), a
//! `.safetensors` file, or a checkpoint folder, resolved into one [`ResolvedWeights`] that
//! says the architecture, the classes and the eval transforms to use with them.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use cv_data::transforms::Pipeline;
use cv_models::Architecture;

use crate::error::{Result, WeightsError};
use crate::hub::{self, HubConfig};
use crate::imagenet;
use crate::registry::{self, Pretrained, IMAGENET_MEAN, IMAGENET_STD};
use cv_train::checkpoint::{ModelCard, CONFIG_FILE, MODEL_FILE};

/// Weights named by the user.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightsSource {
    /// A registry entry (`resnet18.tv_in1k`).
    Registry(&'static Pretrained),
    /// A `.safetensors` file.
    File(PathBuf),
    /// A checkpoint folder holding `model.safetensors` (and usually `config.json`).
    Folder(PathBuf),
}

impl WeightsSource {
    /// An existing file or folder, else a registry name.
    pub fn parse(s: &str) -> Result<WeightsSource> {
        let path = Path::new(s);
        if path.is_dir() {
            return Ok(WeightsSource::Folder(path.to_path_buf()));
        }
        if path.is_file() {
            return Ok(WeightsSource::File(path.to_path_buf()));
        }
        match registry::find(s) {
            Ok(p) => Ok(WeightsSource::Registry(p)),
            Err(e)
                if s.contains(std::path::MAIN_SEPARATOR)
                    || s.contains('/')
                    || s.ends_with(".safetensors") =>
            {
                log::debug!("{s}: not a registry name either: {e}");
                Err(WeightsError::io(
                    path,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
                ))
            }
            Err(e) => Err(e),
        }
    }
}

impl std::fmt::Display for WeightsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightsSource::Registry(p) => f.write_str(p.name),
            WeightsSource::File(p) | WeightsSource::Folder(p) => write!(f, "{}", p.display()),
        }
    }
}

/// How to resolve a source.
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// Never touch the network; registry weights must already be cached.
    pub offline: bool,
    /// Input normalisation mean for weights without a `config.json` (overrides it otherwise).
    pub mean: Option<[f32; 3]>,
    /// Input normalisation std, likewise.
    pub std: Option<[f32; 3]>,
    /// Show a download progress bar.
    pub progress: bool,
    /// The hub to use (its own `progress` applies); `None` reads the environment
    /// ([`HubConfig::from_env`]) and shows a bar only when `progress` is set. `offline` above
    /// is added to either.
    pub hub: Option<HubConfig>,
}

/// Everything needed to build, load and feed a model.
#[derive(Debug, Clone)]
pub struct ResolvedWeights {
    /// The `.safetensors` file.
    pub path: PathBuf,
    /// The network the weights fit.
    pub architecture: Architecture,
    /// Class names; logit `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// The transforms to apply to an image before the model sees it.
    pub eval_transforms: Pipeline,
    /// Side of the square input the weights were trained (or are meant to be used) at.
    pub image_size: usize,
    /// Where the weights came from, for logs and reports.
    pub origin: String,
    /// What was assumed (no `config.json`, normalisation chosen), for the CLI to print.
    pub note: Option<String>,
    /// An int8 checkpoint (made by `cv quantize`; its safetensors metadata says so).
    pub int8: bool,
}

/// Finds (downloading if needed) the weights and says how to use them.
pub fn resolve(source: &WeightsSource, options: &ResolveOptions) -> Result<ResolvedWeights> {
    match source {
        WeightsSource::Registry(p) => {
            let mut hub = match &options.hub {
                Some(hub) => hub.clone(),
                None => {
                    let mut hub = HubConfig::from_env();
                    hub.progress &= options.progress; // HF_HUB_DISABLE_PROGRESS_BARS wins
                    hub
                }
            };
            hub.offline |= options.offline;
            let path = hub::fetch(p, &hub)?;
            let mut eval_transforms = p.eval_transforms();
            let note = override_norm(&mut eval_transforms, options);
            Ok(ResolvedWeights {
                path,
                architecture: p.architecture,
                classes: p.classes(),
                eval_transforms,
                image_size: p.crop as usize,
                origin: format!(
                    "{} (hub {}, {}, ImageNet top-1 {}%)",
                    p.name, p.repo, p.licence, p.top1
                ),
                note,
                int8: false,
            })
        }
        WeightsSource::Folder(dir) => {
            let path = dir.join(MODEL_FILE);
            if !path.is_file() {
                return Err(WeightsError::io(
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "checkpoint folder has no model.safetensors",
                    ),
                ));
            }
            resolve_local(path, options)
        }
        WeightsSource::File(path) => resolve_local(path.clone(), options),
    }
}

/// Applies the mean/std options; returns a note when it changed something.
fn override_norm(p: &mut Pipeline, options: &ResolveOptions) -> Option<String> {
    if options.mean.is_none() && options.std.is_none() {
        return None;
    }
    if let Some(m) = options.mean {
        p.mean = m;
    }
    if let Some(s) = options.std {
        p.std = s;
    }
    let note = format!(
        "normalisation from the options: mean {:?}, std {:?}",
        p.mean, p.std
    );
    log::info!("{note}");
    Some(note)
}

fn resolve_local(path: PathBuf, options: &ResolveOptions) -> Result<ResolvedWeights> {
    let int8 = is_int8(&path)?;
    let config = path
        .parent()
        .map(|d| d.join(CONFIG_FILE))
        .filter(|c| c.is_file());
    if let Some(config) = config {
        let card = ModelCard::read(&config)?;
        let mut eval_transforms = card.eval_transforms.clone();
        let note = override_norm(&mut eval_transforms, options);
        log::info!(
            "{}: classes and transforms from {}",
            path.display(),
            config.display()
        );
        return Ok(ResolvedWeights {
            origin: format!("{} (with {})", path.display(), config.display()),
            path,
            architecture: card.architecture,
            classes: card.classes,
            eval_transforms,
            image_size: card.image_size,
            note,
            int8,
        });
    }
    let header = read_header(&path)?;
    let (architecture, num_classes) = infer_architecture(&path, &header)?;
    let classes = if num_classes == imagenet::NUM_CLASSES {
        imagenet::class_names()
    } else {
        (0..num_classes).map(|i| format!("class_{i}")).collect()
    };
    let size = match architecture {
        Architecture::ResNet18 => (256, 224),
        Architecture::SimpleCnn => (32, 32),
    };
    let mut eval_transforms = Pipeline::eval(size.0, size.1);
    let norm = match (options.mean, options.std) {
        (None, None) => "ImageNet's mean/std (pass --mean/--std if the weights expect another)",
        _ => "mean/std from the options (ImageNet's where not given)",
    };
    eval_transforms.mean = options.mean.unwrap_or(IMAGENET_MEAN);
    eval_transforms.std = options.std.unwrap_or(IMAGENET_STD);
    let note = format!(
        "{}: no {CONFIG_FILE} beside it: architecture {architecture} and {num_classes} classes ({}) inferred from its keys, \
         normalisation {norm}",
        path.display(),
        if num_classes == imagenet::NUM_CLASSES { "ImageNet names" } else { "named class_0.." },
    );
    log::info!("{note}");
    Ok(ResolvedWeights {
        origin: path.display().to_string(),
        path,
        architecture,
        classes,
        eval_transforms,
        image_size: size.1 as usize,
        note: Some(note),
        int8,
    })
}

/// Whether the safetensors file at `path` is an int8 checkpoint: its header's metadata has
/// `format` = [`cv_models::quant::FORMAT`].
pub fn is_int8(path: &Path) -> Result<bool> {
    let header = read_header_json(path)?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.get("format"))
        .and_then(|f| f.as_str())
        == Some(cv_models::quant::FORMAT))
}

/// Shape of every tensor in a safetensors file, from its header only (no tensor data read).
pub fn read_header(path: &Path) -> Result<BTreeMap<String, Vec<usize>>> {
    let corrupt = |reason: String| WeightsError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let json = read_header_json(path)?;
    let obj = json
        .as_object()
        .ok_or_else(|| corrupt("header is not a JSON object".into()))?;
    let mut out = BTreeMap::new();
    for (key, v) in obj {
        if key == "__metadata__" {
            continue;
        }
        let shape = v
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| corrupt(format!("tensor {key} has no valid shape")))?;
        out.insert(key.clone(), shape);
    }
    Ok(out)
}

/// The JSON header of a safetensors file (no tensor data read).
fn read_header_json(path: &Path) -> Result<serde_json::Value> {
    let corrupt = |reason: String| WeightsError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| WeightsError::io(path, e))?;
    let len = file
        .metadata()
        .map_err(|e| WeightsError::io(path, e))?
        .len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n)
        .map_err(|_| corrupt(format!("only {len} bytes, no header")))?;
    let n = u64::from_le_bytes(n);
    if n > 100 << 20 || n + 8 > len {
        return Err(corrupt(format!(
            "header length {n} does not fit a {len}-byte file"
        )));
    }
    let mut buf = vec![0u8; n as usize];
    file.read_exact(&mut buf)
        .map_err(|e| WeightsError::io(path, e))?;
    serde_json::from_slice(&buf).map_err(|e| corrupt(format!("header is not JSON: {e}")))
}

/// The architecture and number of classes a state dict's keys describe.
pub fn infer_architecture(
    path: &Path,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<(Architecture, usize)> {
    let unknown = |reason: String| WeightsError::UnknownArchitecture {
        path: path.to_path_buf(),
        reason,
    };
    let (arch, key) = if shapes.contains_key("fc3.weight") {
        (Architecture::SimpleCnn, "fc3.weight")
    } else if shapes.contains_key("fc.weight") {
        (Architecture::ResNet18, "fc.weight")
    } else {
        let sample: Vec<&str> = shapes.keys().take(5).map(String::as_str).collect();
        return Err(unknown(format!(
            "neither fc.weight (resnet18) nor fc3.weight (cnn) among its {} keys (first: {})",
            shapes.len(),
            sample.join(", ")
        )));
    };
    match shapes[key].as_slice() {
        [classes, _] if *classes > 0 => Ok((arch, *classes)),
        other => Err(unknown(format!(
            "{key} has shape {other:?}, expected [classes, features]"
        ))),
    }
}
