//! `verdicts site build`.

use std::path::PathBuf;
use std::time::Instant;

use crate::config::Config;
use crate::site::{self, DEFAULT_OUT_DIR};

pub fn build(config: &Config, out: Option<PathBuf>) -> anyhow::Result<()> {
    let out = out
        .or_else(|| config.site_out_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_OUT_DIR));
    let started = Instant::now();
    let report = site::build_current(config, &out)?;
    let elapsed = started.elapsed();
    if let Some(old) = &report.retired {
        site::remove_retired(old)?;
    }
    println!(
        "Built {} files ({:.1} MB) into {} in {:.2} s.",
        report.files,
        report.bytes as f64 / 1e6,
        out.display(),
        elapsed.as_secs_f64()
    );
    Ok(())
}
