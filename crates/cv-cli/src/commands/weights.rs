//! `cv weights list` and `cv weights fetch`.

use anyhow::Result;
use cv_weights::hub::{self, HubConfig};
use cv_weights::registry;

use crate::args::{FetchArgs, ListArgs};

/// The registry with what is already in the Hugging Face cache.
pub fn list(a: &ListArgs) -> Result<()> {
    let rows: Vec<serde_json::Value> = registry::registry()
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name,
                "architecture": p.architecture.to_string(),
                "top1": p.top1,
                "bytes": p.approx_bytes,
                "repo": p.repo,
                "licence": p.licence,
                "cached": hub::cached(p).map(|c| c.display().to_string()),
            })
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:>7} {:>9}  {:<8} description",
        "name", "arch", "top-1", "size", "cached"
    );
    for p in registry::registry() {
        println!(
            "{:<20} {:<10} {:>6.2}% {:>6.1} MB  {:<8} {}",
            p.name,
            p.architecture.to_string(),
            p.top1,
            p.approx_bytes as f64 / 1e6,
            if hub::cached(p).is_some() {
                "yes"
            } else {
                "no"
            },
            p.description
        );
    }
    Ok(())
}

/// Downloads (or finds in the cache) and prints the local path.
pub fn fetch(a: &FetchArgs) -> Result<()> {
    let p = registry::find(&a.name).map_err(|e| crate::args::usage(e.to_string()))?;
    let mut config = HubConfig::from_env();
    config.offline |= a.offline;
    config.progress &= !a.quiet;
    config.retries = a.retries;
    let path = hub::fetch(p, &config)?;
    println!("{}", path.display());
    Ok(())
}
