//! The CPU a report's figures come from: its model name and the flags that decide which
//! kernels run (read from `/proc/cpuinfo`; empty elsewhere), plus the bf16 kernel family
//! `cv_ops` picks on it.

use serde::Serialize;

/// The `/proc/cpuinfo` flags that select kernels here or in PyTorch's oneDNN.
const RELEVANT_FLAGS: [&str; 13] = [
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
];

/// What a report says about the CPU.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuInfo {
    /// `model name` of the first processor, or `unknown`.
    pub model: String,
    /// The relevant flags it has, in [`RELEVANT_FLAGS`] order.
    pub flags: Vec<String>,
    /// `amx-bf16`, `avx512-bf16`, or why `--precision bf16` cannot run.
    pub bf16_kernel: String,
}

impl CpuInfo {
    /// This machine's.
    pub fn detect() -> Self {
        let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let mut info = parse(&text);
        info.bf16_kernel = match cv_ops::bf16_kernel() {
            Ok(k) => k.to_string(),
            Err(e) => e.to_string(),
        };
        info
    }
}

/// The model name and relevant flags of the first processor in `/proc/cpuinfo` text.
fn parse(text: &str) -> CpuInfo {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let flags = field("flags").unwrap_or_default();
    let have: Vec<&str> = flags.split_whitespace().collect();
    CpuInfo {
        model: field("model name").unwrap_or_else(|| "unknown".into()),
        flags: RELEVANT_FLAGS
            .iter()
            .filter(|f| have.contains(f))
            .map(|f| f.to_string())
            .collect(),
        bf16_kernel: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_model_and_only_the_relevant_flags_in_order() {
        let text = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: \
                    fpu amx_tile avx2 sse avx512f amx_bf16 fma\n\nprocessor\t: 1\n";
        let info = parse(text);
        assert_eq!(info.model, "Intel(R) Xeon(R) Processor");
        assert_eq!(
            info.flags,
            ["avx2", "fma", "avx512f", "amx_tile", "amx_bf16"]
        );
        assert_eq!(parse("").model, "unknown");
    }
}
