//! Batches of stored messages: an mbox file (mboxrd or mboxo) or a Maildir. Both are read
//! a message at a time, never more than [`MAX_MESSAGE_BYTES`] of one message held: a
//! larger message is counted past, not read into memory, however big the file.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use super::MAX_MESSAGE_BYTES;

/// One message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    Message(Vec<u8>),
    /// Over the limit: skipped unread (its size, as far as it was counted).
    TooLarge {
        bytes: u64,
    },
}

/// The messages of an mbox, without the `From ` separator lines and with one level of
/// `>From ` quoting removed, read from `reader` as they come.
pub struct Mbox<R> {
    reader: R,
    /// A `From ` line has been seen: text before the first one is not a message.
    in_message: bool,
    done: bool,
    line: Vec<u8>,
}

impl<R: BufRead> Mbox<R> {
    pub fn new(reader: R) -> Self {
        Mbox {
            reader,
            in_message: false,
            done: false,
            line: Vec::new(),
        }
    }

    /// Bytes held in buffers now (for the tests of the memory bound).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.line.capacity()
    }
}

/// Reads one line (up to and including its `\n`), keeping at most `cap` bytes of it in
/// `line`; returns the line's whole length (0 at the end of the input).
fn read_line_bounded(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<usize> {
    line.clear();
    let mut total = 0;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(total);
        }
        let (len, ends) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = cap.saturating_sub(line.len());
        line.extend_from_slice(&buf[..len.min(room)]);
        reader.consume(len);
        total += len;
        if ends {
            return Ok(total);
        }
    }
}

impl<R: BufRead> Iterator for Mbox<R> {
    type Item = std::io::Result<Stored>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut message = Vec::new();
        let mut bytes: u64 = 0;
        let mut too_large = false;
        while !self.done {
            // Enough of the line to hold the rest of the message, and always its start (a
            // separator is recognised by its first five bytes).
            let cap = (MAX_MESSAGE_BYTES + 1).saturating_sub(message.len()).max(8);
            let len = match read_line_bounded(&mut self.reader, &mut self.line, cap) {
                Ok(len) => len,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if len == 0 {
                self.done = true;
                break;
            }
            if self.line.starts_with(b"From ") {
                if self.in_message {
                    return Some(Ok(finish(message, bytes, too_large)));
                }
                self.in_message = true;
                continue;
            }
            if !self.in_message {
                continue;
            }
            bytes += len as u64;
            if too_large {
                continue;
            }
            if message.len() + len > MAX_MESSAGE_BYTES {
                too_large = true;
                message = Vec::new();
                continue;
            }
            let line = &self.line[..];
            let unquoted = line.iter().position(|&b| b != b'>');
            match unquoted {
                Some(i) if i > 0 && line[i..].starts_with(b"From ") => {
                    message.extend_from_slice(&line[1..])
                }
                _ => message.extend_from_slice(line),
            }
        }
        if std::mem::take(&mut self.in_message) {
            return Some(Ok(finish(message, bytes, too_large)));
        }
        None
    }
}

fn finish(message: Vec<u8>, bytes: u64, too_large: bool) -> Stored {
    if too_large {
        Stored::TooLarge { bytes }
    } else {
        Stored::Message(message)
    }
}

/// Splits an mbox held in memory into its messages (those over the size limit are left
/// out).
pub fn split_mbox(data: &[u8]) -> Vec<Vec<u8>> {
    Mbox::new(data)
        .filter_map(|m| match m {
            Ok(Stored::Message(m)) => Some(m),
            _ => None,
        })
        .collect()
}

/// One message file, unless it is over the size limit (then only its size is read).
pub fn read_message_file(path: &Path) -> std::io::Result<Stored> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if size > MAX_MESSAGE_BYTES as u64 {
        return Ok(Stored::TooLarge { bytes: size });
    }
    let mut raw = Vec::with_capacity(size as usize);
    // The file may have grown since: never more than one byte past the limit.
    file.take(MAX_MESSAGE_BYTES as u64 + 1)
        .read_to_end(&mut raw)?;
    if raw.len() > MAX_MESSAGE_BYTES {
        return Ok(Stored::TooLarge {
            bytes: raw.len() as u64,
        });
    }
    Ok(Stored::Message(raw))
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

    /// An mbox produced on the fly, never held whole: a separator, a message of `huge`
    /// bytes (in lines of 1 KiB, or one line without a break), then a small message.
    struct Generated {
        parts: Vec<Vec<u8>>,
        huge: u64,
        one_line: bool,
        at: usize,
        sent: u64,
    }

    impl Read for Generated {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.at == 1 && self.sent < self.huge {
                let n = (out.len() as u64).min(self.huge - self.sent) as usize;
                for (i, b) in out[..n].iter_mut().enumerate() {
                    let pos = self.sent + i as u64;
                    *b = if !self.one_line && pos % 1024 == 1023 {
                        b'\n'
                    } else {
                        b'x'
                    };
                }
                self.sent += n as u64;
                return Ok(n);
            }
            if self.at == 1 {
                self.at = 2;
            }
            let Some(part) = self.parts.get_mut(self.at) else {
                return Ok(0);
            };
            let n = out.len().min(part.len());
            out[..n].copy_from_slice(&part[..n]);
            part.drain(..n);
            if part.is_empty() {
                self.at += 1;
            }
            Ok(n)
        }
    }

    #[test]
    fn a_huge_message_is_counted_past_with_bounded_memory() {
        for one_line in [false, true] {
            let huge = 3 * MAX_MESSAGE_BYTES as u64 + 12_345;
            let reader = Generated {
                parts: vec![
                    b"From a@b Mon Jan  5 07:02:11 2026\nSubject: big\n\n".to_vec(),
                    Vec::new(),
                    b"\nFrom c@d Mon Jan  5 07:03:00 2026\nSubject: small\n\nhi\n".to_vec(),
                ],
                huge,
                one_line,
                at: 0,
                sent: 0,
            };
            let mut mbox = Mbox::new(std::io::BufReader::with_capacity(64 * 1024, reader));
            let first = mbox.next().unwrap().unwrap();
            let Stored::TooLarge { bytes } = first else {
                panic!("not skipped: {} bytes", huge)
            };
            assert!(bytes > MAX_MESSAGE_BYTES as u64, "{bytes}");
            assert!(
                mbox.held() <= 2 * (MAX_MESSAGE_BYTES + 1),
                "held {} bytes",
                mbox.held()
            );
            assert_eq!(
                mbox.next().unwrap().unwrap(),
                Stored::Message(b"Subject: small\n\nhi\n".to_vec())
            );
            assert!(mbox.next().is_none());
        }
    }

    #[test]
    fn a_message_file_over_the_limit_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        let file = std::fs::File::create(&big).unwrap();
        // Sparse: takes no disk space, and would take 40 MB of memory if read.
        file.set_len(4 * MAX_MESSAGE_BYTES as u64).unwrap();
        assert_eq!(
            read_message_file(&big).unwrap(),
            Stored::TooLarge {
                bytes: 4 * MAX_MESSAGE_BYTES as u64
            }
        );
        let small = dir.path().join("small");
        std::fs::write(&small, b"Subject: x\n\n").unwrap();
        assert_eq!(
            read_message_file(&small).unwrap(),
            Stored::Message(b"Subject: x\n\n".to_vec())
        );
    }
}
