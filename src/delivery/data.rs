//! The DATA content of an SMTP transaction (RFC 5321 §4.5.2): every line that starts with a
//! dot gets another, a bare LF becomes CRLF, and the content ends with CRLF and the lone
//! dot. One memchr pass finds the line ends; the text between them is copied in bulk,
//! straight from the message's segments into the buffer that is written to the server.

use std::fmt;

use crate::mail::outgoing::OutgoingMessage;

/// A message's DATA content, terminator included. lettre's connection writes any
/// `Display` command in one write, so sending this as a command sends the content without
/// lettre's byte-by-byte transparency encoder and without a second copy of the body.
pub struct DataContent<'a> {
    segments: Vec<&'a str>,
}

impl<'a> DataContent<'a> {
    pub fn new(message: &'a OutgoingMessage) -> Self {
        DataContent {
            segments: message.segments().filter(|s| !s.is_empty()).collect(),
        }
    }

    /// From any sequence of text pieces forming one message.
    pub fn from_segments(segments: impl IntoIterator<Item = &'a str>) -> Self {
        DataContent {
            segments: segments.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }
}

impl fmt::Display for DataContent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The byte before the current position: a line starts after LF (and at the start).
        let mut prev = b'\n';
        for segment in &self.segments {
            let bytes = segment.as_bytes();
            let mut start = 0;
            if prev == b'\n' && bytes[0] == b'.' {
                f.write_str(".")?;
            }
            for lf in memchr::memchr_iter(b'\n', bytes) {
                let cr_before = if lf == 0 {
                    prev == b'\r'
                } else {
                    bytes[lf - 1] == b'\r'
                };
                if cr_before {
                    f.write_str(&segment[start..=lf])?;
                } else {
                    f.write_str(&segment[start..lf])?;
                    f.write_str("\r\n")?;
                }
                start = lf + 1;
                if bytes.get(start) == Some(&b'.') {
                    f.write_str(".")?;
                }
            }
            f.write_str(&segment[start..])?;
            prev = bytes[bytes.len() - 1];
        }
        if prev == b'\n' {
            f.write_str(".\r\n")
        } else {
            f.write_str("\r\n.\r\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(segments: &[&str]) -> String {
        DataContent::from_segments(segments.iter().copied()).to_string()
    }

    #[test]
    fn leading_dots_are_doubled_wherever_segments_split() {
        let text = ".a\r\nb.\r\n..c\r\n.\r\nd\r\n";
        let expected = "..a\r\nb.\r\n...c\r\n..\r\nd\r\n.\r\n";
        assert_eq!(stuffed(&[text]), expected);
        for i in 1..text.len() {
            assert_eq!(stuffed(&[&text[..i], &text[i..]]), expected, "split at {i}");
        }
    }

    #[test]
    fn line_ends_become_crlf_and_the_content_is_terminated() {
        assert_eq!(stuffed(&["a\nb\r\n"]), "a\r\nb\r\n.\r\n");
        assert_eq!(stuffed(&["a\r", "\nb"]), "a\r\nb\r\n.\r\n");
        assert_eq!(stuffed(&["a\n", ".b"]), "a\r\n..b\r\n.\r\n");
        assert_eq!(stuffed(&["", "x", ""]), "x\r\n.\r\n");
        assert_eq!(stuffed(&[]), ".\r\n");
    }

    #[test]
    fn matches_a_byte_by_byte_reference() {
        // The transparency rule written the slow, obvious way.
        fn reference(s: &str) -> String {
            let mut out = String::new();
            let mut line_start = true;
            let mut prev = '\n';
            for c in s.chars() {
                if c == '\n' && prev != '\r' {
                    out.push('\r');
                }
                if line_start && c == '.' {
                    out.push('.');
                }
                out.push(c);
                line_start = c == '\n';
                prev = c;
            }
            if !out.is_empty() && !out.ends_with("\r\n") {
                out.push_str("\r\n");
            }
            out + ".\r\n"
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let s: String = (0..rng.usize(0..40))
                .map(|_| ['.', '\r', '\n', 'a', ' '][rng.usize(0..5)])
                .collect();
            let cut = rng.usize(0..=s.len());
            assert_eq!(stuffed(&[&s[..cut], &s[cut..]]), reference(&s), "{s:?}");
        }
    }
}
