//! Picking a device by name, falling back to the CPU with a warning rather than failing.

use candle_core::Device;

use crate::error::{ModelError, Result};

fn fallback(requested: &str, why: String) -> Device {
    let msg = format!("device {requested:?} unavailable ({why}); using the CPU");
    log::warn!("{msg}");
    eprintln!("warning: {msg}");
    Device::Cpu
}

/// `"cpu"`, `"cuda"` (= `cuda:0`), `"cuda:N"` or `"metal"`. A GPU that is not compiled in
/// (cargo features `cuda` / `metal`) or not present gives the CPU and a warning that says
/// why; an unknown name is [`ModelError::UnknownDevice`].
pub fn select(name: &str) -> Result<Device> {
    let n = name.trim().to_ascii_lowercase();
    match n.as_str() {
        "cpu" => Ok(Device::Cpu),
        "metal" => {
            if !cfg!(feature = "metal") {
                return Ok(fallback(name, "built without the `metal` feature".into()));
            }
            Ok(Device::new_metal(0).unwrap_or_else(|e| fallback(name, e.to_string())))
        }
        _ => {
            let ordinal = match n.as_str() {
                "cuda" => 0,
                other => other
                    .strip_prefix("cuda:")
                    .and_then(|i| i.parse::<usize>().ok())
                    .ok_or_else(|| ModelError::UnknownDevice(name.to_string()))?,
            };
            if !cfg!(feature = "cuda") {
                return Ok(fallback(name, "built without the `cuda` feature".into()));
            }
            Ok(Device::new_cuda(ordinal).unwrap_or_else(|e| fallback(name, e.to_string())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_falls_back() {
        assert!(select("cpu").unwrap().is_cpu());
        assert!(select(" CPU ").unwrap().is_cpu());
        if !cfg!(feature = "cuda") {
            assert!(select("cuda").unwrap().is_cpu());
            assert!(select("cuda:1").unwrap().is_cpu());
        }
        if !cfg!(feature = "metal") {
            assert!(select("metal").unwrap().is_cpu());
        }
        assert!(matches!(select("tpu"), Err(ModelError::UnknownDevice(_))));
        assert!(matches!(
            select("cuda:x"),
            Err(ModelError::UnknownDevice(_))
        ));
    }
}
