//! Smaller, class-balanced datasets for quick experiments (`--limit-train`, `--limit-test`).

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
}
