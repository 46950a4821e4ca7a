//! Large batch buffers. A 100 x 3 x 224 x 224 f32 batch is 60 MB of memory every step. Fresh
//! memory from the kernel costs a page fault per 4 KiB and a zeroing pass, which measured more
//! than the augmentation itself; so a batch is filled chunk by chunk inside the parallel tasks
//! that render it (each chunk is touched once, while it is in cache), huge pages are asked for
//! where the memory is fresh, and [`keep_freed_memory`] lets a process reuse freed batches.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Below this, huge pages do not pay off.
const HUGE_MIN_BYTES: usize = 4 << 20;

/// A `Vec<f32>` of `chunks * chunk` values, built in parallel: `fill(i, piece)` must write
/// every element of the `i`-th piece of `chunk` values. The memory is never zeroed first: that
/// would be a second pass over a buffer far larger than the caches.
///
/// # Safety
/// `fill` must initialise all of `piece` (the callers here are the resamplers, which assert
/// their output size and write each element once); otherwise the returned `Vec` holds
/// uninitialised memory.
pub(crate) unsafe fn par_filled_f32<F>(chunks: usize, chunk: usize, fill: F) -> Vec<f32>
where
    F: Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
{
    let len = chunks
        .checked_mul(chunk)
        .expect("batch size overflows usize");
    let mut v: Vec<f32> = Vec::with_capacity(len);
    if chunk == 0 {
        return v;
    }
    advise_huge(v.spare_capacity_mut());
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, piece)| fill(i, piece));
    // SAFETY: the pieces cover `0..len` exactly, and the caller's `fill` initialised each.
    unsafe { v.set_len(len) };
    v
}

/// `s` as a slice of possibly uninitialised values, for the writers that also fill fresh
/// memory. Sound because those writers only ever store initialised values into it.
pub(crate) fn as_uninit(s: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`; every value stored through the
    // result by this crate is initialised, so `s` stays fully initialised.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), s.len()) }
}

/// Tells glibc's malloc to keep memory it frees for later requests instead of handing it back
/// to the kernel, and to serve every thread from one arena. A training step frees and allocates
/// the same large buffers (batches, activations, gradients) again and again; by default each one
/// above 32 MB is a fresh mapping that is faulted in and zeroed page by page, and the freed top
/// of the heap is returned after every step (`docs/benchmarks.md` has what that costs). The price:
/// the process keeps its peak memory instead of shrinking between steps.
///
/// Process-wide and idempotent; best called first thing in `main`, before threads start (the
/// `cv` binary, `cargo xtask` and `cv_train`'s trainer call it). Returns whether the allocator
/// took the settings (false off glibc, where it does nothing).
pub fn keep_freed_memory() -> bool {
    static APPLIED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *APPLIED.get_or_init(apply_malloc_settings)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply_malloc_settings() -> bool {
    // Larger than any batch or activation of the models here; freed chunks stay in the heap.
    const MMAP_THRESHOLD: libc::c_int = 1 << 30;
    // Freed memory at the top of the heap is kept up to this much.
    const TRIM_THRESHOLD: libc::c_int = i32::MAX;
    // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            && libc::mallopt(libc::M_ARENA_MAX, 1) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply_malloc_settings() -> bool {
    false
}

#[cfg(target_os = "linux")]
fn advise_huge(v: &[MaybeUninit<f32>]) {
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
fn advise_huge(_: &[MaybeUninit<f32>]) {}

#[cfg(test)]
mod tests {
    #[test]
    fn pieces_are_filled_and_placed() {
        for (chunks, chunk) in [(0, 5), (3, 0), (1, 1), (7, 3 << 18)] {
            // SAFETY: the closure writes every element of each piece.
            let v = unsafe {
                super::par_filled_f32(chunks, chunk, |i, piece| {
                    piece.fill(std::mem::MaybeUninit::new(0.0));
                    piece[0] = std::mem::MaybeUninit::new(i as f32 + 1.0);
                })
            };
            assert_eq!(v.len(), chunks * chunk);
            for (i, piece) in v.chunks(chunk.max(1)).enumerate() {
                assert_eq!(piece[0], i as f32 + 1.0);
                assert!(piece[1..].iter().all(|&x| x == 0.0));
            }
        }
    }

    #[test]
    fn allocator_settings_are_idempotent() {
        let first = super::keep_freed_memory();
        assert_eq!(super::keep_freed_memory(), first);
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        assert!(first, "glibc refused the malloc settings");
        let v = vec![1u8; 64 << 20];
        assert_eq!(v[v.len() - 1], 1);
    }
}
