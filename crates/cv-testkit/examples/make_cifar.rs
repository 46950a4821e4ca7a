//! Writes a synthetic, learnable CIFAR-10-format dataset (for trying the CLI without the
//! real download): `cargo run -p cv-testkit --example make_cifar -- DIR [PER_BATCH] [TEST]
//! [colours|textures]` (`textures`: the class is a grating's orientation and period under
//! random colours, harder for a small CNN; see `cv_testkit::cifar::texture_image`).

use cv_testkit::cifar::Synthetic;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "data/synthetic".into());
    let per_batch = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let test = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let kind = match args.next().as_deref() {
        None | Some("colours") => Synthetic::Colours,
        Some("textures") => Synthetic::Textures,
        Some(other) => {
            eprintln!("make_cifar: unknown kind {other:?}: colours or textures");
            std::process::exit(2);
        }
    };
    let root = std::path::Path::new(&dir);
    let out = cv_testkit::cifar::write_cifar_dir_of(kind, root, 5, per_batch, test, 1)?;
    println!("{}", out.display());
    Ok(())
}
