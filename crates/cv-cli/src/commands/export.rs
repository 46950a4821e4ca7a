//! `cv export`: a checkpoint's weights as safetensors for use outside cv.

use anyhow::{Context, Result};
use cv_weights::source::{resolve, ResolveOptions, WeightsSource};

use crate::args::{usage, ExportArgs, ExportFormatArg};

/// Resolves the weights, writes them in the asked format and dtype, prints what it wrote.
pub fn run(a: &ExportArgs) -> Result<()> {
    let source = match (&a.checkpoint, &a.weights) {
        (Some(dir), _) => {
            if !dir.is_dir() {
                anyhow::bail!("--checkpoint {}: no such folder", dir.display());
            }
            WeightsSource::Folder(dir.clone())
        }
        (None, Some(w)) => super::parse_weights(w)?,
        (None, None) => return Err(usage("give --checkpoint DIR or --weights NAME|PATH")),
    };
    let options = ResolveOptions {
        offline: a.offline,
        progress: true,
        ..Default::default()
    };
    let weights = resolve(&source, &options)?;
    match a.format {
        ExportFormatArg::Safetensors => {
            let report =
                cv_weights::export_safetensors(&weights, a.dtype.into(), a.fold_bn, &a.out)
                    .with_context(|| format!("exporting {}", weights.origin))?;
            let folded = if report.folded > 0 {
                format!(", {} BatchNorms folded", report.folded)
            } else {
                String::new()
            };
            println!(
                "wrote {} ({} tensors, {}, {:.1} MB{folded})",
                report.path.display(),
                report.tensors,
                format!("{:?}", a.dtype).to_lowercase(),
                report.bytes as f64 / 1e6
            );
        }
    }
    Ok(())
}
