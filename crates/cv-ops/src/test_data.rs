//! Deterministic test inputs shared by the kernels' unit tests.

/// `len` values in about `[-1.93, 1.93]`, varying with `seed`, with no long repeats.
pub(crate) fn data(len: usize, seed: usize) -> Vec<f64> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104_729) % 2001) as f64 - 1000.0) / 517.0)
        .collect()
}
