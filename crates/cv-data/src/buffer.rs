//! Large batch buffers. A 100 x 3 x 224 x 224 f32 batch is 60 MB of fresh memory every step;
//! with 4 KiB pages, faulting it in costs more than the augmentation itself (measured: ~60% of
//! the time in the kernel). On Linux we ask for transparent huge pages, which cuts the faults
//! 512-fold; elsewhere (or if the kernel says no) this is a plain zeroed `Vec`.

/// Below this, huge pages do not pay off.
const HUGE_MIN_BYTES: usize = 4 << 20;

/// A zero-filled `Vec<f32>` of `len` values, backed by huge pages where the OS allows it.
pub(crate) fn zeroed_f32(len: usize) -> Vec<f32> {
    // `vec![0.0; n]` uses calloc: a large request is a fresh, untouched mapping, so advising
    // it before the first write still takes effect.
    let v = vec![0f32; len];
    advise_huge(&v);
    v
}

#[cfg(target_os = "linux")]
fn advise_huge(v: &[f32]) {
    let bytes = std::mem::size_of_val(v);
    if bytes < HUGE_MIN_BYTES {
        return;
    }
    let huge = 2usize << 20;
    let start = v.as_ptr() as usize;
    let aligned = start.div_ceil(huge) * huge;
    let end = (start + bytes) / huge * huge;
    if end <= aligned {
        return;
    }
    // SAFETY: the range [aligned, end) lies inside the live allocation `v`; MADV_HUGEPAGE is
    // only advice about how to back it and never changes its contents or validity.
    unsafe {
        libc::madvise(
            aligned as *mut libc::c_void,
            end - aligned,
            libc::MADV_HUGEPAGE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_: &[f32]) {}

#[cfg(test)]
mod tests {
    #[test]
    fn buffers_are_zeroed_and_sized() {
        for n in [0, 10, 3 << 20] {
            let v = super::zeroed_f32(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0));
        }
    }
}
