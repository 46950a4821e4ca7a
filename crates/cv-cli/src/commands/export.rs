//! `cv export`: a checkpoint's weights as safetensors or ONNX for use outside cv.

use anyhow::{Context, Result};
use cv_weights::source::{resolve, ResolveOptions};

use crate::args::{usage, ExportArgs, ExportDtypeArg, ExportFormatArg};

/// Resolves the weights, writes them in the asked format and dtype, prints what it wrote.
pub fn run(a: &ExportArgs) -> Result<()> {
    if a.format == ExportFormatArg::Onnx && a.dtype != ExportDtypeArg::F32 {
        return Err(usage(format!(
            "--format onnx writes f32 weights; --dtype {} applies to safetensors only",
            format!("{:?}", a.dtype).to_lowercase()
        )));
    }
    let source = super::weights_source(&a.checkpoint, &a.weights)?;
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
        ExportFormatArg::Onnx => {
            let report = cv_weights::export_onnx(&weights, &a.out)
                .with_context(|| format!("exporting {}", weights.origin))?;
            let size = weights.image_size;
            println!(
                "wrote {} (ONNX opset {}, {} initializers, {} BatchNorms folded, {:.1} MB; \
                 input f32 [batch, 3, {size}, {size}] normalised with mean {:?} std {:?})",
                report.path.display(),
                cv_models::onnx::OPSET,
                report.tensors,
                report.folded,
                report.bytes as f64 / 1e6,
                weights.eval_transforms.mean,
                weights.eval_transforms.std,
            );
        }
    }
    Ok(())
}
