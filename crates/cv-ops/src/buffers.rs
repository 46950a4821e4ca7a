//! What the kernels share between threads and calls: a raw output pointer for threads that
//! write disjoint regions, and growable scratch buffers.

use crate::elem::Elem;

/// A raw output pointer shared by threads that write disjoint regions.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: used only to write regions that no other thread touches (one unit each).
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// A method (not field access) so closures capture the whole `Sync` wrapper.
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// The first `len` elements of `v`, growing it with zeros if it is shorter.
pub(crate) fn grow<T: Elem>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::ZERO);
    }
    &mut v[..len]
}
