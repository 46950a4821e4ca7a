//! The 1,000 ImageNet-1k class names in index order, as torchvision and timm print them
//! (`0` "tench" ... `999` "toilet tissue"), shipped inside the crate so no download is needed.

use std::sync::LazyLock;

/// The names file, one class a line, line `i` is class index `i`.
const NAMES: &str = include_str!("imagenet_classes.txt");

/// Number of ImageNet-1k classes.
pub const NUM_CLASSES: usize = 1000;

/// The class names, index `i` is the name of logit `i`.
pub static CLASSES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    NAMES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
});

/// The class names as owned strings (what model cards and classifiers hold).
pub fn class_names() -> Vec<String> {
    CLASSES.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousand_names_in_torchvision_order() {
        assert_eq!(CLASSES.len(), NUM_CLASSES);
        assert_eq!(CLASSES[0], "tench");
        assert_eq!(CLASSES[1], "goldfish");
        assert_eq!(CLASSES[134], "crane");
        assert_eq!(CLASSES[207], "golden retriever");
        assert_eq!(CLASSES[281], "tabby");
        assert_eq!(CLASSES[285], "Egyptian cat");
        assert_eq!(CLASSES[409], "analog clock");
        assert_eq!(CLASSES[517], "crane");
        assert_eq!(CLASSES[638], "maillot");
        assert_eq!(CLASSES[639], "maillot");
        assert_eq!(CLASSES[954], "banana");
        assert_eq!(CLASSES[999], "toilet tissue");
        assert!(CLASSES.iter().all(|n| n.trim() == *n && !n.is_empty()));
        assert_eq!(class_names().len(), NUM_CLASSES);
    }
}
