//! Augmentation on u8 RGB images, per sample and seeded, written straight into a preallocated
//! f32 CHW (or NCHW batch) buffer with normalisation fused in.
//!
//! Transforms follow torchvision's semantics (parameters, random draws, rounding of sizes and
//! offsets). Geometry is planned lazily: crops, flips and at most one resize are accumulated
//! and rendered in one pass, so RandomCrop+flip+normalise touches each output value once and
//! Resize+CenterCrop computes only the pixels it keeps. A second resize after a first one
//! renders the intermediate to u8 first, as torchvision does between steps.

pub mod ops;
pub mod policies;
mod resample;
mod rows;

use std::borrow::Cow;

use image::RgbImage;
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use resample::{crop_into, crop_to_rgb8, resize_into, resize_to_rgb8, Region, ResizePlan};
use std::mem::MaybeUninit;

use crate::buffer::as_uninit;
pub use policies::{AutoAugmentPolicy, Jitter};

/// CIFAR-10 per-channel mean (training set, 0..1 scale).
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 per-channel standard deviation (training set, 0..1 scale).
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// ImageNet mean used by every torchvision pretrained model.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation used by every torchvision pretrained model.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

fn default_scale() -> [f64; 2] {
    [0.08, 1.0]
}
fn default_ratio() -> [f64; 2] {
    [3.0 / 4.0, 4.0 / 3.0]
}
fn default_true() -> bool {
    true
}
fn default_half() -> f64 {
    0.5
}
fn default_bins() -> u32 {
    31
}
fn default_num_ops() -> u32 {
    2
}
fn default_magnitude() -> u32 {
    9
}
fn default_erase_scale() -> [f64; 2] {
    [0.02, 0.33]
}
fn default_erase_ratio() -> [f64; 2] {
    [0.3, 3.3]
}

/// One augmentation step (square output sizes). Serialised as `{"type": "random_crop", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Transform {
    /// torchvision `RandomResizedCrop`: a random area fraction in `scale` and aspect ratio in
    /// `ratio` (log-uniform), 10 attempts then a centre crop, resized to `size` x `size`.
    RandomResizedCrop {
        /// Output side.
        size: u32,
        /// Range of the crop area as a fraction of the image area.
        #[serde(default = "default_scale")]
        scale: [f64; 2],
        /// Range of the crop aspect ratio (width / height).
        #[serde(default = "default_ratio")]
        ratio: [f64; 2],
        /// Widen the filter when shrinking (PIL / torchvision `antialias=True`).
        #[serde(default = "default_true")]
        antialias: bool,
    },
    /// torchvision `Resize(int)`: the smaller edge becomes `size`, the other keeps the aspect
    /// ratio (truncated).
    Resize {
        /// New length of the smaller edge.
        size: u32,
        /// Widen the filter when shrinking.
        #[serde(default = "default_true")]
        antialias: bool,
    },
    /// torchvision `CenterCrop`: zero-pads when the image is smaller than `size`.
    CenterCrop {
        /// Output side.
        size: u32,
    },
    /// torchvision `RandomCrop(size, padding)`: zero-pad every side by `padding`, then crop
    /// `size` x `size` at a uniform random offset.
    RandomCrop {
        /// Output side.
        size: u32,
        /// Zero padding added on each side before cropping.
        #[serde(default)]
        padding: u32,
    },
    /// Mirror left-right with probability `p`.
    RandomHorizontalFlip {
        /// Probability of flipping.
        #[serde(default = "default_half")]
        p: f64,
    },
    /// torchvision `ColorJitter(brightness, contrast, saturation, hue)`: the four
    /// adjustments in a random order, each factor drawn from its range ([`Jitter`]).
    ColorJitter {
        /// Brightness factor range `[max(0, 1 - b), 1 + b]`; 0 = unchanged.
        #[serde(default)]
        brightness: f64,
        /// Contrast factor range, likewise.
        #[serde(default)]
        contrast: f64,
        /// Saturation factor range, likewise.
        #[serde(default)]
        saturation: f64,
        /// Hue shift range `[-h, h]` in turns, `h <= 0.5`.
        #[serde(default)]
        hue: f64,
    },
    /// torchvision `TrivialAugmentWide`: one of 14 operations, uniformly, at a uniform one of
    /// `num_magnitude_bins` magnitudes of the wide ranges ([`policies`]).
    TrivialAugmentWide {
        /// Number of magnitude bins.
        #[serde(default = "default_bins")]
        num_magnitude_bins: u32,
    },
    /// torchvision `RandAugment`: `num_ops` uniform operations, each at bin `magnitude` of
    /// `num_magnitude_bins`.
    RandAugment {
        /// Operations per image.
        #[serde(default = "default_num_ops")]
        num_ops: u32,
        /// Bin of every operation's magnitude, below `num_magnitude_bins`.
        #[serde(default = "default_magnitude")]
        magnitude: u32,
        /// Number of magnitude bins.
        #[serde(default = "default_bins")]
        num_magnitude_bins: u32,
    },
    /// torchvision `AutoAugment` with a learned policy.
    AutoAugment {
        /// Which policy.
        #[serde(default = "default_policy")]
        policy: AutoAugmentPolicy,
    },
    /// torchvision `RandomErasing(p, scale, ratio, value=0)`: with probability `p`, a random
    /// rectangle of the normalised output is set to 0 (the mean colour). It acts on the
    /// normalised values, as torchvision's does after `Normalize`, so it comes last.
    RandomErasing {
        /// Probability of erasing.
        #[serde(default = "default_half")]
        p: f64,
        /// Range of the erased area as a fraction of the image area.
        #[serde(default = "default_erase_scale")]
        scale: [f64; 2],
        /// Range of the erased rectangle's aspect ratio (height / width), log-uniform.
        #[serde(default = "default_erase_ratio")]
        ratio: [f64; 2],
    },
}

fn default_policy() -> AutoAugmentPolicy {
    AutoAugmentPolicy::Imagenet
}

/// `lo <= hi`, both positive and finite.
fn positive_range(r: [f64; 2]) -> bool {
    r[0] > 0.0 && r[0] <= r[1] && r[1].is_finite()
}

/// `p` is a probability.
fn probability(p: f64, what: &str) -> std::result::Result<(), String> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(format!("{what}: p = {p} is not in [0, 1]"))
    }
}

impl Transform {
    /// `RandomResizedCrop(size)` with torchvision's defaults.
    pub fn random_resized_crop(size: u32) -> Self {
        Self::RandomResizedCrop {
            size,
            scale: default_scale(),
            ratio: default_ratio(),
            antialias: true,
        }
    }

    /// `Resize(size)` of the smaller edge, antialiased.
    pub fn resize(size: u32) -> Self {
        Self::Resize {
            size,
            antialias: true,
        }
    }

    /// `CenterCrop(size)`.
    pub fn center_crop(size: u32) -> Self {
        Self::CenterCrop { size }
    }

    /// `RandomCrop(size, padding)`.
    pub fn random_crop(size: u32, padding: u32) -> Self {
        Self::RandomCrop { size, padding }
    }

    /// `RandomHorizontalFlip(p)`.
    pub fn flip(p: f64) -> Self {
        Self::RandomHorizontalFlip { p }
    }

    /// `TrivialAugmentWide()` with 31 bins.
    pub fn trivial_augment_wide() -> Self {
        Self::TrivialAugmentWide {
            num_magnitude_bins: default_bins(),
        }
    }

    /// `RandAugment(num_ops, magnitude)` with 31 bins.
    pub fn rand_augment(num_ops: u32, magnitude: u32) -> Self {
        Self::RandAugment {
            num_ops,
            magnitude,
            num_magnitude_bins: default_bins(),
        }
    }

    /// `AutoAugment(AutoAugmentPolicy.IMAGENET)`.
    pub fn auto_augment() -> Self {
        Self::AutoAugment {
            policy: AutoAugmentPolicy::Imagenet,
        }
    }

    /// `ColorJitter` of the strengths in `j`.
    pub fn color_jitter(j: Jitter) -> Self {
        Self::ColorJitter {
            brightness: j.brightness,
            contrast: j.contrast,
            saturation: j.saturation,
            hue: j.hue,
        }
    }

    /// `RandomErasing(p)` with torchvision's scale and ratio ranges.
    pub fn random_erasing(p: f64) -> Self {
        Self::RandomErasing {
            p,
            scale: default_erase_scale(),
            ratio: default_erase_ratio(),
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let positive = |s: u32, what: &str| {
            if s == 0 {
                Err(format!("{what}: size must be positive"))
            } else {
                Ok(())
            }
        };
        match self {
            Self::RandomResizedCrop {
                size, scale, ratio, ..
            } => {
                positive(*size, "random_resized_crop")?;
                if !positive_range(*scale) {
                    return Err(format!("random_resized_crop: bad scale range {scale:?}"));
                }
                if !positive_range(*ratio) {
                    return Err(format!("random_resized_crop: bad ratio range {ratio:?}"));
                }
                Ok(())
            }
            Self::Resize { size, .. } => positive(*size, "resize"),
            Self::CenterCrop { size } => positive(*size, "center_crop"),
            Self::RandomCrop { size, .. } => positive(*size, "random_crop"),
            Self::RandomHorizontalFlip { p } => probability(*p, "random_horizontal_flip"),
            Self::ColorJitter { .. } => self.jitter().map_or(Ok(()), |j| j.validate()),
            Self::TrivialAugmentWide { num_magnitude_bins } => {
                if *num_magnitude_bins < 2 {
                    return Err("trivial_augment_wide: num_magnitude_bins must be >= 2".into());
                }
                Ok(())
            }
            Self::RandAugment {
                magnitude,
                num_magnitude_bins,
                ..
            } => {
                if magnitude >= num_magnitude_bins {
                    return Err(format!(
                        "rand_augment: magnitude {magnitude} must be below num_magnitude_bins {num_magnitude_bins}"
                    ));
                }
                Ok(())
            }
            Self::AutoAugment { .. } => Ok(()),
            Self::RandomErasing { p, scale, ratio } => {
                probability(*p, "random_erasing")?;
                if !(positive_range(*scale) && scale[1] <= 1.0) {
                    return Err(format!("random_erasing: bad scale range {scale:?}"));
                }
                if !positive_range(*ratio) {
                    return Err(format!("random_erasing: bad ratio range {ratio:?}"));
                }
                Ok(())
            }
        }
    }

    /// The [`Jitter`] of a `ColorJitter` step.
    fn jitter(&self) -> Option<Jitter> {
        match *self {
            Self::ColorJitter {
                brightness,
                contrast,
                saturation,
                hue,
            } => Some(Jitter {
                brightness,
                contrast,
                saturation,
                hue,
            }),
            _ => None,
        }
    }

    /// Size (width, height) this transform produces from an input of `w` x `h`.
    fn output_size(&self, w: usize, h: usize) -> std::result::Result<(usize, usize), String> {
        Ok(match *self {
            Self::RandomResizedCrop { size, .. } | Self::CenterCrop { size } => {
                (size as usize, size as usize)
            }
            Self::Resize { size, .. } => resized_size(w, h, size as usize),
            Self::RandomCrop { size, padding } => {
                let (pw, ph) = (w + 2 * padding as usize, h + 2 * padding as usize);
                let s = size as usize;
                if pw < s || ph < s {
                    return Err(format!(
                        "random_crop: crop {s}x{s} is larger than the padded image {pw}x{ph}"
                    ));
                }
                (s, s)
            }
            Self::RandomHorizontalFlip { .. }
            | Self::ColorJitter { .. }
            | Self::TrivialAugmentWide { .. }
            | Self::RandAugment { .. }
            | Self::AutoAugment { .. }
            | Self::RandomErasing { .. } => (w, h),
        })
    }
}

/// torchvision `_compute_resized_output_size` for an int size: the smaller edge becomes `size`,
/// the longer one `int(size * long / short)`.
fn resized_size(w: usize, h: usize, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if w <= h {
        (size, new_long.max(1))
    } else {
        (new_long.max(1), size)
    }
}

/// Python's `round` (ties to even), which torchvision uses for crop sizes and offsets.
fn round_even(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// torchvision `RandomResizedCrop.get_params`: (left, top, width, height).
fn rrc_params<R: Rng>(
    rng: &mut R,
    w: usize,
    h: usize,
    scale: [f64; 2],
    ratio: [f64; 2],
) -> (i64, i64, usize, usize) {
    let area = (w * h) as f64;
    let (lr0, lr1) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * (scale[0] + (scale[1] - scale[0]) * rng.random::<f64>());
        let aspect = (lr0 + (lr1 - lr0) * rng.random::<f64>()).exp();
        let cw = round_even((target * aspect).sqrt());
        let ch = round_even((target / aspect).sqrt());
        if cw > 0 && cw as usize <= w && ch > 0 && ch as usize <= h {
            let (cw, ch) = (cw as usize, ch as usize);
            let top = rng.random_range(0..=(h - ch)) as i64;
            let left = rng.random_range(0..=(w - cw)) as i64;
            return (left, top, cw, ch);
        }
    }
    // Fallback: the largest centred crop whose ratio is within range.
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio[0] {
        (w, (round_even(w as f64 / ratio[0]) as usize).clamp(1, h))
    } else if in_ratio > ratio[1] {
        ((round_even(h as f64 * ratio[1]) as usize).clamp(1, w), h)
    } else {
        (w, h)
    };
    (((w - cw) / 2) as i64, ((h - ch) / 2) as i64, cw, ch)
}

/// torchvision `RandomErasing.get_params` on a `w` x `h` output: the rectangle to erase, or
/// none when the draw says no or 10 attempts find no rectangle that fits.
fn erasing_params<R: Rng>(
    rng: &mut R,
    (w, h): (usize, usize),
    p: f64,
    scale: [f64; 2],
    ratio: [f64; 2],
) -> Option<Erased> {
    if rng.random::<f64>() >= p {
        return None;
    }
    let area = (w * h) as f64;
    let (lr0, lr1) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * (scale[0] + (scale[1] - scale[0]) * rng.random::<f64>());
        let aspect = (lr0 + (lr1 - lr0) * rng.random::<f64>()).exp();
        let eh = round_even((target * aspect).sqrt());
        let ew = round_even((target / aspect).sqrt());
        if !(eh < h as i64 && ew < w as i64) {
            continue;
        }
        let (eh, ew) = (eh.max(0) as usize, ew.max(0) as usize);
        let y = rng.random_range(0..=(h - eh));
        let x = rng.random_range(0..=(w - ew));
        return Some(Erased { x, y, w: ew, h: eh });
    }
    None
}

/// A rectangle of the output set to 0 after normalisation (RandomErasing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Erased {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
}

impl Erased {
    /// Flat indices (within one plane of width `width`) of the erased pixels.
    fn pixels(self, width: usize) -> impl Iterator<Item = usize> {
        (self.y..self.y + self.h)
            .flat_map(move |row| (row * width + self.x)..(row * width + self.x + self.w))
    }
}

/// Everything drawn for one sample: the geometry and u8 changes, then the erased rectangles.
struct Plan<'a> {
    view: View<'a>,
    erased: Vec<Erased>,
}

impl Plan<'_> {
    /// Render normalised planar f32 into `out` (every element written), then erase.
    fn render(&self, stream: bool, scale: [f32; 3], bias: [f32; 3], out: &mut [MaybeUninit<f32>]) {
        self.view.render(self.view.flip, stream, scale, bias, out);
        let (w, h) = self.view.size();
        for rect in &self.erased {
            for c in 0..3 {
                for i in rect.pixels(w) {
                    out[c * w * h + i].write(0.0);
                }
            }
        }
    }

    /// The u8 image, erased rectangles painted `fill` (the mean colour).
    fn to_image(&self, fill: [u8; 3]) -> RgbImage {
        let mut img = self.view.to_image(self.view.flip);
        let w = img.width() as usize;
        let data: &mut [u8] = &mut img;
        for rect in &self.erased {
            for i in rect.pixels(w) {
                data[3 * i..3 * i + 3].copy_from_slice(&fill);
            }
        }
        img
    }
}

/// The geometry accumulated so far for one sample: a region of `img` (possibly beyond its
/// borders, which read as zero), then an optional resize with an output window, then a mirror.
struct View<'a> {
    img: Cow<'a, RgbImage>,
    x0: i64,
    y0: i64,
    w: usize,
    h: usize,
    resize: Option<ResizePlan>,
    flip: bool,
}

impl<'a> View<'a> {
    fn new(img: &'a RgbImage) -> Self {
        Self {
            img: Cow::Borrowed(img),
            x0: 0,
            y0: 0,
            w: img.width() as usize,
            h: img.height() as usize,
            resize: None,
            flip: false,
        }
    }

    fn size(&self) -> (usize, usize) {
        match &self.resize {
            Some(r) => (r.ww, r.wh),
            None => (self.w, self.h),
        }
    }

    fn region_in_bounds(&self) -> bool {
        self.x0 >= 0
            && self.y0 >= 0
            && self.x0 as usize + self.w <= self.img.width() as usize
            && self.y0 as usize + self.h <= self.img.height() as usize
    }

    /// Crop `w` x `h` at (`x`, `y`) of the current view (may extend beyond it: zeros).
    fn crop(&mut self, x: i64, y: i64, w: usize, h: usize) {
        let (cw, _) = self.size();
        // Cropping a mirrored view = mirroring the crop taken at the mirrored offset.
        let ux = if self.flip {
            cw as i64 - x - w as i64
        } else {
            x
        };
        match &mut self.resize {
            None => {
                self.x0 += ux;
                self.y0 += y;
                self.w = w;
                self.h = h;
            }
            Some(r) => {
                if ux >= 0 && y >= 0 && ux as usize + w <= r.ww && y as usize + h <= r.wh {
                    r.wx += ux as usize;
                    r.wy += y as usize;
                    r.ww = w;
                    r.wh = h;
                } else {
                    self.materialise();
                    self.crop(x, y, w, h);
                }
            }
        }
    }

    fn resize(&mut self, w: usize, h: usize, antialias: bool) {
        if self.resize.is_some() || !self.region_in_bounds() {
            self.materialise();
        }
        if (w, h) == (self.w, self.h) {
            return;
        }
        self.resize = Some(ResizePlan {
            out_w: w,
            out_h: h,
            wx: 0,
            wy: 0,
            ww: w,
            wh: h,
            antialias,
            flip: false,
            stream: false,
        });
    }

    /// Render with `v * scale + bias` into planar `out`, writing every element of it.
    fn render(
        &self,
        flip: bool,
        stream: bool,
        scale: [f32; 3],
        bias: [f32; 3],
        out: &mut [MaybeUninit<f32>],
    ) {
        let (w, h) = self.size();
        assert_eq!(out.len(), 3 * w * h, "render buffer size");
        let img = &*self.img;
        match self.resize {
            Some(plan) => {
                let region = Region {
                    data: img.as_raw(),
                    img_w: img.width() as usize,
                    x0: self.x0 as usize,
                    y0: self.y0 as usize,
                    w: self.w,
                    h: self.h,
                };
                resize_into(
                    region,
                    ResizePlan {
                        flip,
                        stream,
                        ..plan
                    },
                    scale,
                    bias,
                    out,
                );
            }
            None => crop_into(
                img.as_raw(),
                img.width() as usize,
                img.height() as usize,
                self.x0,
                self.y0,
                self.w,
                self.h,
                flip,
                scale,
                bias,
                out,
                stream,
            ),
        }
    }

    /// The view as a plain u8 image that a policy may change in place. The geometry so far,
    /// mirror included, is rendered first (rounded), as torchvision hands an image from step
    /// to step; an untouched source image is copied, never changed.
    fn pixels_mut(&mut self) -> &mut RgbImage {
        let whole = self.x0 == 0
            && self.y0 == 0
            && self.w == self.img.width() as usize
            && self.h == self.img.height() as usize;
        if self.resize.is_some() || self.flip || !whole {
            let img = self.to_image(self.flip);
            *self = Self::new_owned(img);
        }
        self.img.to_mut()
    }

    fn new_owned(img: RgbImage) -> Self {
        Self {
            x0: 0,
            y0: 0,
            w: img.width() as usize,
            h: img.height() as usize,
            img: Cow::Owned(img),
            resize: None,
            flip: false,
        }
    }

    /// Render the current view to u8 (rounded, as torchvision does between steps), leaving a
    /// plain full-image view; the pending mirror stays pending.
    fn materialise(&mut self) {
        let flip = self.flip;
        *self = Self::new_owned(self.to_image(false));
        self.flip = flip;
    }

    fn to_image(&self, flip: bool) -> RgbImage {
        let (w, h) = self.size();
        let img = &*self.img;
        let (img_w, img_h) = (img.width() as usize, img.height() as usize);
        let buf = match self.resize {
            Some(plan) => {
                let region = Region {
                    data: img.as_raw(),
                    img_w,
                    x0: self.x0 as usize,
                    y0: self.y0 as usize,
                    w: self.w,
                    h: self.h,
                };
                resize_to_rgb8(region, ResizePlan { flip, ..plan })
            }
            None => crop_to_rgb8(img.as_raw(), img_w, img_h, self.x0, self.y0, w, h, flip),
        };
        RgbImage::from_raw(w as u32, h as u32, buf).expect("buffer sized for the view")
    }
}

/// A sequence of transforms plus the normalisation applied when writing f32:
/// `(v / 255 - mean[c]) / std[c]`. Serialisable, so a checkpoint records how it was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    /// Steps applied in order to the u8 image.
    pub transforms: Vec<Transform>,
    /// Per-channel mean subtracted after scaling to 0..1.
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: [f32; 3],
}

impl Default for Pipeline {
    /// No transform, values scaled to 0..1 (torchvision `ToTensor`).
    fn default() -> Self {
        Self::none([0.0; 3], [1.0; 3])
    }
}

impl Pipeline {
    /// No geometric transform, only normalisation with `mean` and `std`.
    pub fn none(mean: [f32; 3], std: [f32; 3]) -> Self {
        Self {
            transforms: Vec::new(),
            mean,
            std,
        }
    }

    /// The standard CIFAR-10 training recipe: RandomCrop(32, padding 4), flip, CIFAR mean/std.
    pub fn cifar_train() -> Self {
        Self {
            transforms: vec![Transform::random_crop(32, 4), Transform::flip(0.5)],
            mean: CIFAR10_MEAN,
            std: CIFAR10_STD,
        }
    }

    /// CIFAR-10 evaluation: normalisation only.
    pub fn cifar_eval() -> Self {
        Self::none(CIFAR10_MEAN, CIFAR10_STD)
    }

    /// ImageNet-style training: RandomResizedCrop(size), flip, ImageNet mean/std.
    pub fn imagenet_train(size: u32) -> Self {
        Self {
            transforms: vec![Transform::random_resized_crop(size), Transform::flip(0.5)],
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// Evaluation: Resize(resize) of the smaller edge, CenterCrop(crop), ImageNet mean/std.
    pub fn eval(resize: u32, crop: u32) -> Self {
        Self {
            transforms: vec![Transform::resize(resize), Transform::center_crop(crop)],
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// The same transforms with another normalisation.
    pub fn with_normalization(mut self, mean: [f32; 3], std: [f32; 3]) -> Self {
        self.mean = mean;
        self.std = std;
        self
    }

    /// Check parameters (positive sizes, sane ranges, non-zero std).
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| DataError::Transform { message };
        for t in &self.transforms {
            t.validate().map_err(bad)?;
        }
        let erasing = |t: &Transform| matches!(t, Transform::RandomErasing { .. });
        if let Some(first) = self.transforms.iter().position(erasing) {
            if !self.transforms[first..].iter().all(erasing) {
                return Err(bad(
                    "random_erasing acts on the normalised output, so it must come after every other transform".into(),
                ));
            }
        }
        for c in 0..3 {
            if !(self.std[c].is_finite() && self.std[c] != 0.0 && self.mean[c].is_finite()) {
                return Err(bad(format!(
                    "normalisation: mean {:?} / std {:?} must be finite with std != 0",
                    self.mean, self.std
                )));
            }
        }
        Ok(())
    }

    /// (width, height) of the output for a `w` x `h` input. Random draws never change it.
    pub fn output_size(&self, w: u32, h: u32) -> Result<(usize, usize)> {
        self.validate()?;
        if w == 0 || h == 0 {
            return Err(DataError::Transform {
                message: format!("empty input image {w}x{h}"),
            });
        }
        let mut size = (w as usize, h as usize);
        for t in &self.transforms {
            size = t
                .output_size(size.0, size.1)
                .map_err(|message| DataError::Transform { message })?;
        }
        Ok(size)
    }

    /// Number of f32 values one sample of a `w` x `h` input produces (3 x H x W).
    pub fn output_len(&self, w: u32, h: u32) -> Result<usize> {
        let (ow, oh) = self.output_size(w, h)?;
        Ok(3 * ow * oh)
    }

    /// Draw every random parameter from the per-sample `seed`, plan the geometry and apply
    /// the u8 policies.
    fn plan<'a>(&self, img: &'a RgbImage, seed: u64) -> Plan<'a> {
        let mut rng = crate::seed::rng(seed);
        let mut view = View::new(img);
        let mut erased = Vec::new();
        for t in &self.transforms {
            let (w, h) = view.size();
            match *t {
                Transform::RandomResizedCrop {
                    size,
                    scale,
                    ratio,
                    antialias,
                } => {
                    let (x, y, cw, ch) = rrc_params(&mut rng, w, h, scale, ratio);
                    view.crop(x, y, cw, ch);
                    view.resize(size as usize, size as usize, antialias);
                }
                Transform::Resize { size, antialias } => {
                    let (nw, nh) = resized_size(w, h, size as usize);
                    view.resize(nw, nh, antialias);
                }
                Transform::CenterCrop { size } => {
                    let s = size as i64;
                    let off = |len: usize| -> i64 {
                        if len as i64 >= s {
                            round_even((len as i64 - s) as f64 / 2.0)
                        } else {
                            // torchvision pads (len - s) // 2 on the left/top, then crops at 0.
                            -((s - len as i64) / 2)
                        }
                    };
                    view.crop(off(w), off(h), size as usize, size as usize);
                }
                Transform::RandomCrop { size, padding } => {
                    let (s, p) = (size as usize, padding as usize);
                    let (pw, ph) = (w + 2 * p, h + 2 * p);
                    let (top, left) = if pw == s && ph == s {
                        (0, 0)
                    } else {
                        (
                            rng.random_range(0..=(ph - s)),
                            rng.random_range(0..=(pw - s)),
                        )
                    };
                    view.crop(left as i64 - p as i64, top as i64 - p as i64, s, s);
                }
                Transform::RandomHorizontalFlip { p } => {
                    if rng.random::<f64>() < p {
                        view.flip = !view.flip;
                    }
                }
                Transform::ColorJitter { .. } => {
                    if let Some(j) = t.jitter() {
                        j.apply(&mut rng, view.pixels_mut());
                    }
                }
                Transform::TrivialAugmentWide { num_magnitude_bins } => {
                    let bins = num_magnitude_bins as usize;
                    policies::trivial_augment_wide(&mut rng, view.pixels_mut(), bins);
                }
                Transform::RandAugment {
                    num_ops,
                    magnitude,
                    num_magnitude_bins,
                } => policies::rand_augment(
                    &mut rng,
                    view.pixels_mut(),
                    num_ops as usize,
                    magnitude as usize,
                    num_magnitude_bins as usize,
                ),
                Transform::AutoAugment { policy } => {
                    policies::auto_augment(&mut rng, view.pixels_mut(), policy)
                }
                Transform::RandomErasing { p, scale, ratio } => {
                    erased.extend(erasing_params(&mut rng, (w, h), p, scale, ratio));
                }
            }
        }
        Plan { view, erased }
    }

    /// The u8 colour of a normalised 0: the mean, what RandomErasing paints in a preview.
    fn mean_colour(&self) -> [u8; 3] {
        self.mean
            .map(|m| (m * 255.0).round().clamp(0.0, 255.0) as u8)
    }

    fn scale_bias(&self) -> ([f32; 3], [f32; 3]) {
        let mut scale = [0f32; 3];
        let mut bias = [0f32; 3];
        for c in 0..3 {
            scale[c] = 1.0 / (255.0 * self.std[c]);
            bias[c] = -self.mean[c] / self.std[c];
        }
        (scale, bias)
    }

    /// Augment `img` with the random stream of `seed` and write the normalised CHW result into
    /// `out`, which must hold exactly [`Pipeline::output_len`] values.
    pub fn apply_into(&self, img: &RgbImage, seed: u64, out: &mut [f32]) -> Result<()> {
        let need = self.output_len(img.width(), img.height())?;
        if out.len() != need {
            return Err(DataError::Transform {
                message: format!(
                    "output buffer holds {} values, the pipeline writes {need}",
                    out.len()
                ),
            });
        }
        let (scale, bias) = self.scale_bias();
        self.plan(img, seed)
            .render(false, scale, bias, as_uninit(out));
        Ok(())
    }

    /// Augment `img` and return the normalised CHW values and the (width, height).
    pub fn apply(&self, img: &RgbImage, seed: u64) -> Result<(Vec<f32>, (usize, usize))> {
        let size = self.output_size(img.width(), img.height())?;
        let mut out = vec![0f32; 3 * size.0 * size.1];
        self.apply_into(img, seed, &mut out)?;
        Ok((out, size))
    }

    /// Augment `img` without normalising, as a u8 image (for previews and tests).
    pub fn augment(&self, img: &RgbImage, seed: u64) -> Result<RgbImage> {
        self.output_size(img.width(), img.height())?;
        Ok(self.plan(img, seed).to_image(self.mean_colour()))
    }

    /// Augment many images in parallel (rayon) into one NCHW buffer; `seeds[i]` drives
    /// `images[i]`. All outputs must have the same size, otherwise the error names the first
    /// sample that differs. Returns the buffer and the (width, height) of each sample.
    pub fn apply_batch(
        &self,
        images: &[&RgbImage],
        seeds: &[u64],
    ) -> Result<(Vec<f32>, (usize, usize))> {
        let size = self.batch_output_size(images, seeds)?;
        let (scale, bias) = self.scale_bias();
        // Streaming stores: the buffer is reused memory far larger than the caches.
        // SAFETY: `render` writes every element of its sample's piece (it asserts the size).
        let out = unsafe {
            crate::buffer::par_filled_f32(images.len(), 3 * size.0 * size.1, |i, dst| {
                self.plan(images[i], seeds[i])
                    .render(true, scale, bias, dst);
            })
        };
        Ok((out, size))
    }

    /// The common (width, height) of the outputs of a batch, or the error naming the first
    /// sample that differs.
    pub fn batch_output_size(&self, images: &[&RgbImage], seeds: &[u64]) -> Result<(usize, usize)> {
        if images.len() != seeds.len() {
            return Err(DataError::Batch {
                message: format!("{} images but {} seeds", images.len(), seeds.len()),
            });
        }
        let Some(first) = images.first() else {
            return Err(DataError::Batch {
                message: "empty batch".into(),
            });
        };
        let sample = |i: usize, img: &RgbImage| {
            self.output_size(img.width(), img.height())
                .map_err(|e| match e {
                    DataError::Transform { message } => DataError::Transform {
                        message: format!(
                            "sample {i} ({}x{}): {message}",
                            img.width(),
                            img.height()
                        ),
                    },
                    other => other,
                })
        };
        let size = sample(0, first)?;
        for (i, img) in images.iter().enumerate().skip(1) {
            let s = sample(i, img)?;
            if s != size {
                return Err(DataError::Batch {
                    message: format!(
                        "sample {i} ({}x{}) becomes {}x{} but sample 0 ({}x{}) becomes {}x{}; add a fixed-size transform (resize + crop)",
                        img.width(),
                        img.height(),
                        s.0,
                        s.1,
                        first.width(),
                        first.height(),
                        size.0,
                        size.1
                    ),
                });
            }
        }
        Ok(size)
    }

    /// Like [`Pipeline::apply_batch`] but into a caller-owned buffer (reused across batches,
    /// e.g. before a copy to a GPU), which must hold exactly `N x 3 x H x W` values.
    pub fn apply_batch_into(
        &self,
        images: &[&RgbImage],
        seeds: &[u64],
        out: &mut [f32],
    ) -> Result<(usize, usize)> {
        let size = self.batch_output_size(images, seeds)?;
        let per = 3 * size.0 * size.1;
        if out.len() != per * images.len() {
            return Err(DataError::Batch {
                message: format!(
                    "output buffer holds {} values, the batch needs {}",
                    out.len(),
                    per * images.len()
                ),
            });
        }
        self.render_batch(images, seeds, size, out, true);
        Ok(size)
    }

    /// Render a checked batch in parallel, one sample per rayon task.
    fn render_batch(
        &self,
        images: &[&RgbImage],
        seeds: &[u64],
        size: (usize, usize),
        out: &mut [f32],
        stream: bool,
    ) {
        let (scale, bias) = self.scale_bias();
        out.par_chunks_mut(3 * size.0 * size.1)
            .zip(images.par_iter().zip(seeds.par_iter()))
            .for_each(|(dst, (img, &seed))| {
                self.plan(img, seed)
                    .render(stream, scale, bias, as_uninit(dst));
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_follows_torchvision() {
        assert_eq!(resized_size(32, 32, 224), (224, 224));
        assert_eq!(resized_size(640, 480, 256), (341, 256));
        assert_eq!(resized_size(480, 640, 256), (256, 341));
    }

    #[test]
    fn rrc_params_stay_inside() {
        let mut rng = crate::seed::rng(7);
        for _ in 0..2000 {
            let (x, y, w, h) = rrc_params(&mut rng, 40, 30, default_scale(), default_ratio());
            assert!(x >= 0 && y >= 0 && x as usize + w <= 40 && y as usize + h <= 30);
        }
        // Impossible ratio forces the centred fallback.
        let (x, y, w, h) = rrc_params(&mut rng, 100, 10, [0.9, 1.0], [1.0, 1.0]);
        assert_eq!((x, y, w, h), (45, 0, 10, 10));
    }

    #[test]
    fn serde_round_trip() {
        let p = Pipeline::imagenet_train(224);
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"type\":\"random_resized_crop\""), "{json}");
        let back: Pipeline = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        let short: Transform =
            serde_json::from_str(r#"{"type":"random_resized_crop","size":64}"#).unwrap();
        assert_eq!(short, Transform::random_resized_crop(64));
    }
}
