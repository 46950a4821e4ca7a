//! Smaller, class-balanced datasets for quick experiments (`--limit-train`, `--limit-test`),
//! and stratified hold-outs (`--val-split`).

use rand::seq::SliceRandom;

use crate::{seed, Dataset};

impl Dataset {
    /// At most `n` samples, drawn with `seed`, as evenly across classes as the data allows,
    /// kept in their original order. Returns a clone when `n >= len()`.
    pub fn subset(&self, n: usize, seed: u64) -> Dataset {
        if n >= self.len() {
            return self.clone();
        }
        let groups = self.classes.len().max(1);
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); groups];
        for (i, &l) in self.labels.iter().enumerate() {
            by_class[(l as usize).min(groups - 1)].push(i);
        }
        let mut rng = seed::shuffle_rng(seed, u64::MAX);
        for idx in &mut by_class {
            idx.shuffle(&mut rng);
        }
        // Round-robin over classes until n samples are taken.
        let mut picked = Vec::with_capacity(n);
        let mut round = 0;
        while picked.len() < n {
            for idx in &by_class {
                if let Some(&i) = idx.get(round) {
                    if picked.len() < n {
                        picked.push(i);
                    }
                }
            }
            round += 1;
        }
        picked.sort_unstable();
        Dataset {
            images: picked.iter().map(|&i| self.images[i].clone()).collect(),
            labels: picked.iter().map(|&i| self.labels[i]).collect(),
            classes: self.classes.clone(),
        }
    }
}

impl Dataset {
    /// Splits off a seeded, stratified `fraction` of the samples: from each class,
    /// `round(fraction * n)` of its `n` images drawn with `seed`, keeping at least one in the
    /// rest. Returns `(rest, held_out)`, both in the original order; together they are `self`.
    pub fn split_stratified(&self, fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let groups = self.classes.len().max(1);
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); groups];
        for (i, &l) in self.labels.iter().enumerate() {
            by_class[(l as usize).min(groups - 1)].push(i);
        }
        let mut rng = seed::shuffle_rng(seed, u64::MAX - 1);
        let mut held = vec![false; self.len()];
        for idx in &mut by_class {
            idx.shuffle(&mut rng);
            let n = idx.len();
            let take =
                ((n as f64 * fraction.clamp(0.0, 1.0)).round() as usize).min(n.saturating_sub(1));
            for &i in &idx[..take] {
                held[i] = true;
            }
        }
        let pick = |want: bool| Dataset {
            images: (0..self.len())
                .filter(|&i| held[i] == want)
                .map(|i| self.images[i].clone())
                .collect(),
            labels: (0..self.len())
                .filter(|&i| held[i] == want)
                .map(|i| self.labels[i])
                .collect(),
            classes: self.classes.clone(),
        };
        (pick(false), pick(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_is_balanced_seeded_and_bounded() {
        let d = Dataset {
            images: (0..100).map(|_| image::RgbImage::new(2, 2)).collect(),
            labels: (0..100).map(|i| if i < 80 { 0 } else { 1 }).collect(),
            classes: vec!["a".into(), "b".into()],
        };
        let s = d.subset(30, 7);
        assert_eq!(s.len(), 30);
        assert_eq!(s.per_class(), vec![15, 15]);
        assert_eq!(s.labels, d.subset(30, 7).labels);
        assert_eq!(d.subset(500, 1).len(), 100);
    }

    #[test]
    fn stratified_split_is_seeded_disjoint_and_keeps_every_class() {
        let d = Dataset {
            images: (0..100)
                .map(|i| image::RgbImage::from_pixel(1, 1, image::Rgb([i as u8, 0, 0])))
                .collect(),
            labels: (0..100)
                .map(|i| {
                    if i < 80 {
                        0
                    } else if i < 99 {
                        1
                    } else {
                        2
                    }
                })
                .collect(),
            classes: vec!["a".into(), "b".into(), "c".into()],
        };
        let (rest, val) = d.split_stratified(0.25, 3);
        assert_eq!(
            val.per_class(),
            vec![20, 5, 0],
            "round(0.25 n), one image kept"
        );
        assert_eq!(rest.per_class(), vec![60, 14, 1]);
        let mut ids: Vec<u8> = rest
            .images
            .iter()
            .chain(&val.images)
            .map(|im| im.get_pixel(0, 0)[0])
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..100).collect::<Vec<u8>>(), "disjoint, nothing lost");
        assert_eq!(val.labels, d.split_stratified(0.25, 3).1.labels);
        let other: Vec<u8> = d
            .split_stratified(0.25, 4)
            .1
            .images
            .iter()
            .map(|im| im.get_pixel(0, 0)[0])
            .collect();
        let this: Vec<u8> = val.images.iter().map(|im| im.get_pixel(0, 0)[0]).collect();
        assert_ne!(this, other, "another seed draws others");
    }
}
