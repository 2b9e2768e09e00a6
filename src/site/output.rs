//! Writing a built site: every file goes into a fresh folder beside the output folder, which
//! then replaces the old one by rename, so readers see either the old site or the new one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::SiteFile;

#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct OutputError {
    action: &'static str,
    path: PathBuf,
    source: io::Error,
}

fn fail<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> OutputError + 'p {
    move |source| OutputError {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A sibling of `out_dir` named after it, so the final renames stay on one file system.
fn sibling(out_dir: &Path, tag: &str) -> PathBuf {
    let name = out_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "site".into());
    out_dir.with_file_name(format!(".{name}.{}-{tag}", std::process::id()))
}

/// Writes `files` and swaps them in as `out_dir`. Returns the bytes written and the folder
/// holding the previous site, if there was one: removing it is left to the caller, as on a
/// slow disk deleting a large site takes longer than building it, and the new site is
/// already live.
pub fn publish(out_dir: &Path, files: &[SiteFile]) -> Result<(u64, Option<PathBuf>), OutputError> {
    let out_dir = if out_dir.is_relative() {
        std::env::current_dir()
            .map_err(fail("cannot resolve", out_dir))?
            .join(out_dir)
    } else {
        out_dir.to_owned()
    };
    if let Some(parent) = out_dir.parent() {
        fs::create_dir_all(parent).map_err(fail("cannot create", parent))?;
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let staging = sibling(&out_dir, &format!("new-{stamp}"));
    let retired = sibling(&out_dir, &format!("old-{stamp}"));
    let written = write_tree(&staging, files);
    let bytes = match written {
        Ok(b) => b,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };

    // A directory cannot be renamed over a non-empty one, so the old site steps aside
    // first; the gap between the two renames is a few microseconds.
    let had_old = match fs::symlink_metadata(&out_dir) {
        Ok(_) => {
            fs::rename(&out_dir, &retired).map_err(fail("cannot move aside", &out_dir))?;
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(fail("cannot inspect", &out_dir)(e)),
    };
    if let Err(e) = fs::rename(&staging, &out_dir) {
        if had_old {
            let _ = fs::rename(&retired, &out_dir);
        }
        let _ = fs::remove_dir_all(&staging);
        return Err(fail("cannot move into place", &out_dir)(e));
    }
    Ok((bytes, had_old.then_some(retired)))
}

/// Deletes the folder of a previous site that [`publish`] moved aside.
pub fn remove_retired(path: &Path) -> Result<(), OutputError> {
    fs::remove_dir_all(path).map_err(fail("cannot remove the previous site", path))
}

fn write_tree(root: &Path, files: &[SiteFile]) -> Result<u64, OutputError> {
    fs::create_dir_all(root).map_err(fail("cannot create", root))?;
    let mut bytes = 0;
    for f in files {
        let path = root.join(&f.path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(fail("cannot create", dir))?;
        }
        fs::write(&path, &f.body).map_err(fail("cannot write", &path))?;
        bytes += f.body.len() as u64;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, body: &str) -> SiteFile {
        SiteFile {
            path: path.into(),
            body: body.into(),
        }
    }

    #[test]
    fn a_rebuild_replaces_the_whole_folder_and_leaves_nothing_beside_it() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("public");
        let (_, first) = publish(
            &out,
            &[file("index.html", "one"), file("old/index.html", "x")],
        )
        .unwrap();
        assert!(first.is_none());
        let (_, retired) =
            publish(&out, &[file("index.html", "two"), file("a/b/c.xml", "y")]).unwrap();
        let retired = retired.expect("the first build was moved aside");
        assert_eq!(
            fs::read_to_string(retired.join("index.html")).unwrap(),
            "one"
        );
        remove_retired(&retired).unwrap();
        assert_eq!(fs::read_to_string(out.join("index.html")).unwrap(), "two");
        assert_eq!(fs::read_to_string(out.join("a/b/c.xml")).unwrap(), "y");
        assert!(!out.join("old").exists(), "pages of the old build are gone");
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["public"]);
    }
}
