//! Writes a synthetic, learnable CIFAR-10-format dataset (for trying the CLI without the
//! real download): `cargo run -p cv-testkit --example make_cifar -- DIR [PER_BATCH] [TEST]`.

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "data/synthetic".into());
    let per_batch = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let test = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let out = cv_testkit::cifar::write_cifar_dir(std::path::Path::new(&dir), per_batch, test, 1)?;
    println!("{}", out.display());
    Ok(())
}
