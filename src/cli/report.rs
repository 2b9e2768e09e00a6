//! `verdicts report [--out DIR]`: writes the report page to `DIR/index.html`.

use std::path::Path;

use anyhow::Context;

use crate::config::Config;

pub fn run(config: &Config, out: &Path) -> anyhow::Result<()> {
    let conn = crate::store::open(&config.database_path())?;
    let html = crate::tracking::report::render(config, &conn, chrono::Utc::now())?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("cannot create output folder {}", out.display()))?;
    let path = out.join("index.html");
    std::fs::write(&path, &html).with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "Wrote {} ({:.1} KB)",
        path.display(),
        html.len() as f64 / 1024.0
    );
    Ok(())
}
