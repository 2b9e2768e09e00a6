//! SMTP transparency (RFC 5321 §4.5.2), the form a message takes between DATA and the
//! lone dot: every line that starts with a dot gets another, and a bare LF becomes CRLF.
//! One memchr pass finds the line ends; the text between them is copied in bulk.

use std::fmt;

/// Writes `text` in its transparent form, given the byte written just before it (`b'\n'`
/// at the start of the content). Returns the last byte of `text`, or `prev` if it is empty.
pub fn write_transparent(
    out: &mut impl fmt::Write,
    text: &str,
    prev: u8,
) -> Result<u8, fmt::Error> {
    let bytes = text.as_bytes();
    let Some(&last) = bytes.last() else {
        return Ok(prev);
    };
    let mut start = 0;
    if prev == b'\n' && bytes[0] == b'.' {
        out.write_str(".")?;
    }
    for lf in memchr::memchr_iter(b'\n', bytes) {
        let cr_before = if lf == 0 {
            prev == b'\r'
        } else {
            bytes[lf - 1] == b'\r'
        };
        if cr_before {
            out.write_str(&text[start..=lf])?;
        } else {
            out.write_str(&text[start..lf])?;
            out.write_str("\r\n")?;
        }
        start = lf + 1;
        if bytes.get(start) == Some(&b'.') {
            out.write_str(".")?;
        }
    }
    out.write_str(&text[start..])?;
    Ok(last)
}

/// `text`'s transparent form when it starts a line, computed once for text that every
/// recipient shares.
pub fn at_line_start(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 64);
    write_transparent(&mut out, text, b'\n').expect("writing to a String cannot fail");
    out
}
