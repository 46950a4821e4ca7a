//! `cv data inspect`.

use anyhow::{Context, Result};

use crate::args::InspectArgs;

/// Counts per split and class, then decodes every image as the integrity check.
pub fn inspect(a: &InspectArgs) -> Result<()> {
    let found = cv_data::inspect::inspect(&a.dir)?;
    let splits = cv_data::open(&a.dir, &cv_data::OpenOptions { skip_bad: false })
        .with_context(|| format!("integrity check of {}", a.dir.display()))?;
    if a.json {
        println!("{}", serde_json::to_string(&found)?);
        return Ok(());
    }
    let format = serde_json::to_value(found.format)?;
    println!(
        "{}: format {} ({})",
        a.dir.display(),
        format.as_str().unwrap_or("?"),
        found.format.layout()
    );
    println!("{:<20} {:>8} {:>8}", "class", "train", "test");
    for (i, c) in found.classes.iter().enumerate() {
        let tr = found.splits.train.per_class.get(i).copied().unwrap_or(0);
        let te = found.splits.test.per_class.get(i).copied().unwrap_or(0);
        println!("{c:<20} {tr:>8} {te:>8}");
    }
    println!(
        "{:<20} {:>8} {:>8}",
        "total", found.splits.train.total, found.splits.test.total
    );
    let (w, h) = splits
        .train
        .images
        .first()
        .map(|i| i.dimensions())
        .unwrap_or((0, 0));
    println!(
        "integrity: ok ({} images decoded; first image {w}x{h})",
        splits.train.len() + splits.test.len()
    );
    Ok(())
}
