//! torchvision's automatic augmentation policies and `ColorJitter`: which operation, at which
//! magnitude and with which probability. The operations themselves are in [`super::ops`].
//!
//! The operation lists, magnitude bins, signs and probabilities are those of
//! `torchvision.transforms.{TrivialAugmentWide, RandAugment, AutoAugment, ColorJitter}`; the
//! random draws come from the sample's own stream, so they are reproducible but not torch's.

use image::RgbImage;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::ops;

/// One operation of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Leave the image as it is.
    Identity,
    /// Shear along x by `magnitude` pixels per pixel.
    ShearX,
    /// Shear along y.
    ShearY,
    /// Shift by `int(magnitude)` pixels along x.
    TranslateX,
    /// Shift along y.
    TranslateY,
    /// Rotate by `magnitude` degrees.
    Rotate,
    /// `adjust_brightness(1 + magnitude)`.
    Brightness,
    /// `adjust_saturation(1 + magnitude)`.
    Color,
    /// `adjust_contrast(1 + magnitude)`.
    Contrast,
    /// `adjust_sharpness(1 + magnitude)`.
    Sharpness,
    /// Keep `int(magnitude)` bits.
    Posterize,
    /// Invert the values `>= magnitude`.
    Solarize,
    /// Stretch each channel to 0..255.
    AutoContrast,
    /// Histogram equalisation.
    Equalize,
    /// `255 - v`.
    Invert,
}

impl Op {
    /// Every operation, Identity first.
    pub const ALL: [Op; 15] = [
        Op::Identity,
        Op::ShearX,
        Op::ShearY,
        Op::TranslateX,
        Op::TranslateY,
        Op::Rotate,
        Op::Brightness,
        Op::Color,
        Op::Contrast,
        Op::Sharpness,
        Op::Posterize,
        Op::Solarize,
        Op::AutoContrast,
        Op::Equalize,
        Op::Invert,
    ];

    /// torchvision's name of the operation (`"ShearX"`, `"AutoContrast"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Op::Identity => "Identity",
            Op::ShearX => "ShearX",
            Op::ShearY => "ShearY",
            Op::TranslateX => "TranslateX",
            Op::TranslateY => "TranslateY",
            Op::Rotate => "Rotate",
            Op::Brightness => "Brightness",
            Op::Color => "Color",
            Op::Contrast => "Contrast",
            Op::Sharpness => "Sharpness",
            Op::Posterize => "Posterize",
            Op::Solarize => "Solarize",
            Op::AutoContrast => "AutoContrast",
            Op::Equalize => "Equalize",
            Op::Invert => "Invert",
        }
    }

    /// The operation torchvision calls `name`.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// The operations TrivialAugmentWide and RandAugment choose from, in torchvision's order.
pub const WIDE_OPS: [Op; 14] = [
    Op::Identity,
    Op::ShearX,
    Op::ShearY,
    Op::TranslateX,
    Op::TranslateY,
    Op::Rotate,
    Op::Brightness,
    Op::Color,
    Op::Contrast,
    Op::Sharpness,
    Op::Posterize,
    Op::Solarize,
    Op::AutoContrast,
    Op::Equalize,
];

/// Which magnitude table: TrivialAugmentWide's wide ranges, or the ranges RandAugment and
/// AutoAugment share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// TrivialAugmentWide: shear 0.99, translate 32 px, rotate 135 degrees, enhance 0.99,
    /// posterize down to 2 bits.
    Wide,
    /// RandAugment / AutoAugment: shear 0.3, translate 150/331 of the side, rotate 30 degrees,
    /// enhance 0.9, posterize down to 4 bits.
    Standard,
}

/// `torch.linspace(start, end, n)[k]` in float32 (torch fills the first half forwards from
/// `start` and the second backwards from `end`).
fn linspace(start: f32, end: f32, n: usize, k: usize) -> f64 {
    if n <= 1 {
        return start as f64;
    }
    let step = (end - start) / (n - 1) as f32;
    let v = if k < n / 2 {
        start + step * k as f32
    } else {
        end - step * (n - 1 - k) as f32
    };
    v as f64
}

/// The magnitude of `op` in bin `bin` of `bins`, and whether it takes a random sign; `None`
/// for the operations without a magnitude. `size` is the image's (width, height).
pub fn magnitude(
    op: Op,
    space: Space,
    bin: usize,
    bins: usize,
    size: (usize, usize),
) -> Option<(f64, bool)> {
    let wide = space == Space::Wide;
    let lin = |end: f32| linspace(0.0, end, bins, bin);
    let posterize_span = if wide { 6.0 } else { 4.0 };
    Some(match op {
        Op::ShearX | Op::ShearY => (lin(if wide { 0.99 } else { 0.3 }), true),
        Op::TranslateX | Op::TranslateY if wide => (lin(32.0), true),
        Op::TranslateX => (lin(150.0 / 331.0 * size.0 as f32), true),
        Op::TranslateY => (lin(150.0 / 331.0 * size.1 as f32), true),
        Op::Rotate => (lin(if wide { 135.0 } else { 30.0 }), true),
        Op::Brightness | Op::Color | Op::Contrast | Op::Sharpness => {
            (lin(if wide { 0.99 } else { 0.9 }), true)
        }
        Op::Posterize => {
            let per = (bins.max(2) - 1) as f32 / posterize_span;
            (8.0 - (bin as f32 / per).round_ties_even() as f64, false)
        }
        Op::Solarize => (linspace(255.0, 0.0, bins, bin), false),
        Op::Identity | Op::AutoContrast | Op::Equalize | Op::Invert => return None,
    })
}

/// torchvision `_apply_op`: apply `op` at `magnitude` (signed already).
pub fn apply_op(img: &mut RgbImage, op: Op, magnitude: f64) {
    match op {
        Op::Identity => {}
        Op::ShearX => *img = ops::shear(img, magnitude, 0.0),
        Op::ShearY => *img = ops::shear(img, 0.0, magnitude),
        Op::TranslateX => *img = ops::translate(img, magnitude.trunc(), 0.0),
        Op::TranslateY => *img = ops::translate(img, 0.0, magnitude.trunc()),
        Op::Rotate => *img = ops::rotate(img, magnitude),
        Op::Brightness => ops::adjust_brightness(img, 1.0 + magnitude),
        Op::Color => ops::adjust_saturation(img, 1.0 + magnitude),
        Op::Contrast => ops::adjust_contrast(img, 1.0 + magnitude),
        Op::Sharpness => ops::adjust_sharpness(img, 1.0 + magnitude),
        Op::Posterize => ops::posterize(img, magnitude.max(0.0) as u32),
        Op::Solarize => ops::solarize(img, magnitude),
        Op::AutoContrast => ops::autocontrast(img),
        Op::Equalize => ops::equalize(img),
        Op::Invert => ops::invert(img),
    }
}

/// One operation a policy drew: which, at which magnitude bin (none for the operations
/// without a magnitude), and whether the magnitude is negated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drawn {
    /// The operation.
    pub op: Op,
    /// Its magnitude bin.
    pub bin: Option<usize>,
    /// Negate the magnitude (drawn with probability 1/2 for the signed operations).
    pub negative: bool,
}

impl Drawn {
    fn new<R: Rng>(rng: &mut R, op: Op, space: Space, bin: usize, bins: usize) -> Self {
        match magnitude(op, space, bin, bins, (1, 1)) {
            None => Drawn {
                op,
                bin: None,
                negative: false,
            },
            Some((_, signed)) => Drawn {
                op,
                bin: Some(bin),
                negative: signed && rng.random_bool(0.5),
            },
        }
    }

    /// Apply it to `img` with the magnitudes of `space` in `bins` bins.
    pub fn apply(self, img: &mut RgbImage, space: Space, bins: usize) {
        let size = (img.width() as usize, img.height() as usize);
        let m = self
            .bin
            .and_then(|b| magnitude(self.op, space, b, bins, size))
            .map_or(0.0, |(m, _)| if self.negative { -m } else { m });
        apply_op(img, self.op, m);
    }
}

/// TrivialAugmentWide's draw: one operation, uniformly, at a uniform bin of `bins`.
pub fn draw_trivial_augment_wide<R: Rng>(rng: &mut R, bins: usize) -> Drawn {
    let op = WIDE_OPS[rng.random_range(0..WIDE_OPS.len())];
    let bin = match magnitude(op, Space::Wide, 0, bins, (1, 1)) {
        Some(_) => rng.random_range(0..bins),
        None => 0,
    };
    Drawn::new(rng, op, Space::Wide, bin, bins)
}

/// TrivialAugmentWide on `img`.
pub fn trivial_augment_wide<R: Rng>(rng: &mut R, img: &mut RgbImage, bins: usize) {
    draw_trivial_augment_wide(rng, bins).apply(img, Space::Wide, bins);
}

/// RandAugment's draw: `num_ops` operations, uniformly with repetition, each at bin
/// `magnitude` of `bins`.
pub fn draw_rand_augment<R: Rng>(
    rng: &mut R,
    num_ops: usize,
    magnitude: usize,
    bins: usize,
) -> Vec<Drawn> {
    (0..num_ops)
        .map(|_| {
            let op = WIDE_OPS[rng.random_range(0..WIDE_OPS.len())];
            Drawn::new(rng, op, Space::Standard, magnitude, bins)
        })
        .collect()
}

/// RandAugment on `img` (every operation keeps the size, so drawing first changes nothing).
pub fn rand_augment<R: Rng>(
    rng: &mut R,
    img: &mut RgbImage,
    num_ops: usize,
    magnitude: usize,
    bins: usize,
) {
    for d in draw_rand_augment(rng, num_ops, magnitude, bins) {
        d.apply(img, Space::Standard, bins);
    }
}

/// A learned AutoAugment policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoAugmentPolicy {
    /// The policy learned on ImageNet (`AutoAugmentPolicy.IMAGENET`).
    Imagenet,
}

/// AutoAugment's magnitudes have 10 bins.
pub const AUTO_BINS: usize = 10;

/// Two (operation, probability, magnitude bin) steps of an AutoAugment policy.
pub type SubPolicy = [(Op, f64, Option<usize>); 2];

/// torchvision's ImageNet policy: 25 sub-policies of two (operation, probability, bin).
const IMAGENET_POLICY: [SubPolicy; 25] = {
    use Op::*;
    [
        [(Posterize, 0.4, Some(8)), (Rotate, 0.6, Some(9))],
        [(Solarize, 0.6, Some(5)), (AutoContrast, 0.6, None)],
        [(Equalize, 0.8, None), (Equalize, 0.6, None)],
        [(Posterize, 0.6, Some(7)), (Posterize, 0.6, Some(6))],
        [(Equalize, 0.4, None), (Solarize, 0.2, Some(4))],
        [(Equalize, 0.4, None), (Rotate, 0.8, Some(8))],
        [(Solarize, 0.6, Some(3)), (Equalize, 0.6, None)],
        [(Posterize, 0.8, Some(5)), (Equalize, 1.0, None)],
        [(Rotate, 0.2, Some(3)), (Solarize, 0.6, Some(8))],
        [(Equalize, 0.6, None), (Posterize, 0.4, Some(6))],
        [(Rotate, 0.8, Some(8)), (Color, 0.4, Some(0))],
        [(Rotate, 0.4, Some(9)), (Equalize, 0.6, None)],
        [(Equalize, 0.0, None), (Equalize, 0.8, None)],
        [(Invert, 0.6, None), (Equalize, 1.0, None)],
        [(Color, 0.6, Some(4)), (Contrast, 1.0, Some(8))],
        [(Rotate, 0.8, Some(8)), (Color, 1.0, Some(2))],
        [(Color, 0.8, Some(8)), (Solarize, 0.8, Some(7))],
        [(Sharpness, 0.4, Some(7)), (Invert, 0.6, None)],
        [(ShearX, 0.6, Some(5)), (Equalize, 1.0, None)],
        [(Color, 0.4, Some(0)), (Equalize, 0.6, None)],
        [(Equalize, 0.4, None), (Solarize, 0.2, Some(4))],
        [(Solarize, 0.6, Some(5)), (AutoContrast, 0.6, None)],
        [(Invert, 0.6, None), (Equalize, 1.0, None)],
        [(Color, 0.6, Some(4)), (Contrast, 1.0, Some(8))],
        [(Equalize, 0.8, None), (Equalize, 0.6, None)],
    ]
};

/// The (operation, probability, bin) pairs of `policy`, as torchvision lists them.
pub fn sub_policies(policy: AutoAugmentPolicy) -> &'static [SubPolicy] {
    match policy {
        AutoAugmentPolicy::Imagenet => &IMAGENET_POLICY,
    }
}

/// AutoAugment's draw: a uniform sub-policy, then each of its two operations with its
/// probability; returns the operations that apply, in order.
pub fn draw_auto_augment<R: Rng>(rng: &mut R, policy: AutoAugmentPolicy) -> Vec<Drawn> {
    let table = sub_policies(policy);
    let sub = table[rng.random_range(0..table.len())];
    // torchvision draws both probabilities and both signs before applying anything.
    let probs: [f64; 2] = [rng.random(), rng.random()];
    let negate: [bool; 2] = [rng.random_bool(0.5), rng.random_bool(0.5)];
    sub.into_iter()
        .enumerate()
        .filter(|&(i, (_, p, _))| probs[i] <= p)
        .map(|(i, (op, _, bin))| {
            let signed = bin
                .and_then(|b| magnitude(op, Space::Standard, b, AUTO_BINS, (1, 1)))
                .is_some_and(|(_, s)| s);
            Drawn {
                op,
                bin,
                negative: signed && negate[i],
            }
        })
        .collect()
}

/// AutoAugment on `img`.
pub fn auto_augment<R: Rng>(rng: &mut R, img: &mut RgbImage, policy: AutoAugmentPolicy) {
    for d in draw_auto_augment(rng, policy) {
        d.apply(img, Space::Standard, AUTO_BINS);
    }
}

/// ColorJitter's strengths: brightness, contrast and saturation factors are drawn from
/// `[max(0, 1 - s), 1 + s]`, the hue shift from `[-h, h]`; 0 leaves that property alone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Jitter {
    /// Brightness strength.
    pub brightness: f64,
    /// Contrast strength.
    pub contrast: f64,
    /// Saturation strength.
    pub saturation: f64,
    /// Hue strength, at most 0.5.
    pub hue: f64,
}

impl Jitter {
    /// Checks the ranges torchvision checks.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("color_jitter: {name} = {v} must be >= 0"));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return Err(format!(
                "color_jitter: hue = {} is not in [0, 0.5]",
                self.hue
            ));
        }
        Ok(())
    }

    /// The order of the adjustments (0 brightness, 1 contrast, 2 saturation, 3 hue) and each
    /// factor, uniform in its range (none at strength 0); torchvision draws the order first.
    pub fn draw<R: Rng>(&self, rng: &mut R) -> ([usize; 4], [Option<f64>; 4]) {
        let mut order = [0usize, 1, 2, 3];
        order.shuffle(rng);
        let mut factor = |s: f64, centre: f64, lo: f64| {
            (s > 0.0).then(|| rng.random_range((centre - s).max(lo)..=centre + s))
        };
        let b = factor(self.brightness, 1.0, 0.0);
        let c = factor(self.contrast, 1.0, 0.0);
        let s = factor(self.saturation, 1.0, 0.0);
        let h = factor(self.hue, 0.0, -0.5);
        (order, [b, c, s, h])
    }

    /// Apply the four adjustments in a random order, each with its drawn factor.
    pub fn apply<R: Rng>(&self, rng: &mut R, img: &mut RgbImage) {
        let (order, factors) = self.draw(rng);
        for i in order {
            let Some(f) = factors[i] else { continue };
            match i {
                0 => ops::adjust_brightness(img, f),
                1 => ops::adjust_contrast(img, f),
                2 => ops::adjust_saturation(img, f),
                _ => ops::adjust_hue(img, f),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magnitude_tables_follow_torchvision() {
        let s = (224, 160);
        assert_eq!(
            magnitude(Op::Posterize, Space::Wide, 30, 31, s),
            Some((2.0, false))
        );
        assert_eq!(
            magnitude(Op::Posterize, Space::Standard, 9, 31, s),
            Some((7.0, false))
        );
        assert_eq!(
            magnitude(Op::Posterize, Space::Standard, 8, 10, s),
            Some((4.0, false))
        );
        assert_eq!(
            magnitude(Op::Solarize, Space::Wide, 0, 31, s),
            Some((255.0, false))
        );
        assert_eq!(
            magnitude(Op::Solarize, Space::Wide, 30, 31, s),
            Some((0.0, false))
        );
        let (t, signed) = magnitude(Op::TranslateY, Space::Standard, 30, 31, s).unwrap();
        assert!(signed && (t - 150.0 / 331.0 * 160.0).abs() < 1e-4, "{t}");
        let (r, _) = magnitude(Op::Rotate, Space::Wide, 15, 31, s).unwrap();
        assert!((r - 67.5).abs() < 1e-5, "{r}");
        assert_eq!(magnitude(Op::Equalize, Space::Wide, 3, 31, s), None);
    }

    #[test]
    fn trivial_augment_draws_every_operation() {
        let img = RgbImage::from_fn(12, 9, |x, y| {
            image::Rgb([(x * 20) as u8, (y * 25) as u8, 90])
        });
        let mut rng = crate::seed::rng(3);
        let mut changed = 0;
        for _ in 0..200 {
            let mut out = img.clone();
            trivial_augment_wide(&mut rng, &mut out, 31);
            assert_eq!(out.dimensions(), img.dimensions());
            changed += usize::from(out != img);
        }
        // Identity is 1 of 14 operations (and a few draws are near-identities).
        assert!((150..200).contains(&changed), "{changed}");
    }

    #[test]
    fn jitter_of_zero_strength_is_identity() {
        let img = RgbImage::from_fn(5, 5, |x, y| image::Rgb([(x * 40) as u8, (y * 30) as u8, 7]));
        let mut out = img.clone();
        let none = Jitter {
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
        };
        none.apply(&mut crate::seed::rng(1), &mut out);
        assert_eq!(out, img);
        assert!(Jitter { hue: 0.6, ..none }.validate().is_err());
    }
}
