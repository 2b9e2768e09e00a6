//! Batches of stored messages: an mbox file (mboxrd or mboxo) or a Maildir.

use std::path::{Path, PathBuf};

/// Splits an mbox into its messages, without the `From ` separator lines and with one
/// level of `>From ` quoting removed.
pub fn split_mbox(data: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            if let Some(m) = current.take() {
                messages.push(m);
            }
            current = Some(Vec::new());
            continue;
        }
        // Text before the first separator is not a message.
        let Some(m) = current.as_mut() else { continue };
        let unquoted = line.iter().position(|&b| b != b'>');
        match unquoted {
            Some(i) if i > 0 && line[i..].starts_with(b"From ") => m.extend_from_slice(&line[1..]),
            _ => m.extend_from_slice(line),
        }
    }
    if let Some(m) = current {
        messages.push(m);
    }
    messages
}

/// The message files of a Maildir (`new/` then `cur/`), or of a plain folder of files, in
/// name order so a re-run sees them in the same order.
pub fn maildir_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let subdirs: Vec<PathBuf> = ["new", "cur"]
        .iter()
        .map(|s| dir.join(s))
        .filter(|p| p.is_dir())
        .collect();
    let folders = if subdirs.is_empty() {
        vec![dir.to_path_buf()]
    } else {
        subdirs
    };
    let mut files = Vec::new();
    for folder in folders {
        let mut here = Vec::new();
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') || !entry.file_type()?.is_file() {
                continue;
            }
            here.push(entry.path());
        }
        here.sort();
        files.extend(here);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_splits_on_from_lines_and_unquotes() {
        let mbox = b"From MAILER-DAEMON Mon Jan  5 07:02:11 2026\nSubject: one\n\nbody\n>From here\n\nFrom a@b Mon Jan  5 07:03:00 2026\nSubject: two\n\n>>From x\n";
        let m = split_mbox(mbox);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], b"Subject: one\n\nbody\nFrom here\n\n");
        assert_eq!(m[1], b"Subject: two\n\n>From x\n");
        assert!(split_mbox(b"no separator\n").is_empty());
    }
}
