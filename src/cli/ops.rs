//! `verdicts init` (the explicit creation of a state database) and `verdicts backup` (a
//! consistent copy of the live one).

use std::path::Path;

use anyhow::Context;

use crate::config::Config;
use crate::error::user_error;
use crate::store::{self, Opened};

pub fn init(config: &Config) -> anyhow::Result<()> {
    let path = config.database_path();
    match store::create(&path)? {
        (_, Opened::Created) => eprintln!("Created a new state database at {}.", path.display()),
        (conn, Opened::Existing) => {
            store::quick_check(&conn, &path)?;
            println!(
                "The state database {} already exists and is intact; nothing changed.",
                path.display()
            );
        }
    }
    Ok(())
}

pub fn backup(config: &Config, dest: &Path) -> anyhow::Result<()> {
    let path = config.database_path();
    let conn = store::open(&path)?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(&path, dest) {
        return user_error(format!(
            "{} is the live database itself; name another file for the backup",
            dest.display()
        ));
    }
    if let Some(folder) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create the backup folder {}", folder.display()))?;
    }
    let bytes = store::backup(&conn, dest)?;
    println!(
        "Backed up {} to {} ({:.1} KB).",
        path.display(),
        dest.display(),
        bytes as f64 / 1024.0
    );
    Ok(())
}
