//! The element types the kernels are written for: f32 (training) and f64 (exact gradient checks).

/// A float the gemm crate multiplies.
pub(crate) trait Elem:
    Copy
    + Send
    + Sync
    + 'static
    + PartialEq
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::AddAssign
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    const HALF: Self;
    /// Whether `Self` is `f32` (so slices of it may be read as f32 by f32-only kernels).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    const IS_F32: bool;

    /// The values as f32, for kernels written for f32 only (`None` for f64).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn as_f32(s: &[Self]) -> Option<&[f32]>;

    /// f32 values as `Self` (only called where [`Elem::as_f32`] gave `Some`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn from_f32(v: Vec<f32>) -> Option<Vec<Self>>;

    /// Whether the value is NaN.
    fn is_nan_(self) -> bool;
    /// The value as f64 (exact for both types).
    fn to_f64(self) -> f64;
    /// An f64 rounded to `Self`.
    fn from_f64(v: f64) -> Self;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    const IS_F32: bool = true;

    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }

    fn from_f32(v: Vec<f32>) -> Option<Vec<Self>> {
        Some(v)
    }

    fn is_nan_(self) -> bool {
        self.is_nan()
    }

    fn to_f64(self) -> f64 {
        self as f64
    }

    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const HALF: Self = 0.5;
    const IS_F32: bool = false;

    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }

    fn from_f32(_: Vec<f32>) -> Option<Vec<Self>> {
        None
    }

    fn is_nan_(self) -> bool {
        self.is_nan()
    }

    fn to_f64(self) -> f64 {
        self
    }

    fn from_f64(v: f64) -> Self {
        v
    }
}
