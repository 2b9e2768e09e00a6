//! The DATA content of an SMTP transaction: the message in its transparent form
//! ([`crate::mail::transparent`]), ending with CRLF and the lone dot. The shared body
//! chunks come already in that form (made once per issue); only a copy's own header block
//! and link are scanned here. Everything is copied straight into the buffer that is written
//! to the server.

use std::fmt;

use crate::mail::outgoing::OutgoingMessage;
use crate::mail::transparent::write_transparent;

/// A message's DATA content, terminator included. lettre's connection writes any
/// `Display` command in one write, so sending this as a command sends the content without
/// lettre's byte-by-byte transparency encoder and without a second copy of the body.
pub struct DataContent<'a> {
    /// Each piece of text, with its transparent form when it was made in advance (valid
    /// only where the piece starts a line).
    segments: Vec<(&'a str, Option<&'a str>)>,
}

impl<'a> DataContent<'a> {
    pub fn new(message: &'a OutgoingMessage) -> Self {
        DataContent {
            segments: message
                .data_segments()
                .filter(|(s, _)| !s.is_empty())
                .collect(),
        }
    }

    /// Replaces `out`'s text with this content, reusing its memory.
    pub fn write_into(&self, out: &mut String) {
        use std::fmt::Write;
        out.clear();
        write!(out, "{self}").expect("writing to a String cannot fail");
    }

    /// From any sequence of text pieces forming one message.
    pub fn from_segments(segments: impl IntoIterator<Item = &'a str>) -> Self {
        DataContent {
            segments: segments
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(|s| (s, None))
                .collect(),
        }
    }
}

impl fmt::Display for DataContent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The byte before the current position: a line starts after LF (and at the start).
        let mut prev = b'\n';
        for &(text, ready) in &self.segments {
            prev = match ready {
                Some(transparent) if prev == b'\n' => {
                    f.write_str(transparent)?;
                    text.as_bytes()[text.len() - 1]
                }
                _ => write_transparent(f, text, prev)?,
            };
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
    fn a_message_sends_the_same_bytes_as_its_segments_stuffed_on_the_fly() {
        use crate::mail::outgoing::{BodyLayout, OutgoingMessage};
        use lettre::address::Envelope;
        // Shared chunks that start with dots, right after a link and after the header block.
        let text = vec![".first\r\n".to_string(), "..second\r\n.\r\n".to_string()];
        let html = vec!["<p>\r\n.x".to_string(), ".y\r\n".to_string()];
        let body = std::sync::Arc::new(BodyLayout::new("b", &text, &html));
        let envelope = Envelope::new(
            Some("a@example.com".parse().unwrap()),
            vec!["b@example.com".parse().unwrap()],
        )
        .unwrap();
        for link in ["https://x.example/u?t=1=\r\n", "no-line-end", ".dot\n"] {
            let message = OutgoingMessage::new(
                envelope.clone(),
                "Subject: s\r\n\r\n".into(),
                link.into(),
                body.clone(),
            );
            let on_the_fly = DataContent::from_segments(message.segments()).to_string();
            assert_eq!(
                DataContent::new(&message).to_string(),
                on_the_fly,
                "{link:?}"
            );
            assert!(on_the_fly.contains("\r\n..first"), "{on_the_fly:?}");
            // A chunk after a link is stuffed only where the link ends its line.
            assert_eq!(on_the_fly.contains("\n...second"), link.ends_with('\n'));
        }
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
