//! The bytes of each recipient's message, laid out once per issue. The body is the issue's
//! shared text with the recipient's link spliced in between fixed chunks, so a copy is a
//! small header block, the encoded link, and references to the shared chunks: nothing of the
//! ~50 KB body is copied until it is written to the server. With DKIM on, the fixed chunks
//! are canonicalised once and the body hash of the first (up to the first link) is computed
//! once; each copy continues from a clone of that state.

use std::sync::Arc;

use lettre::address::Envelope;

use crate::mail::dkim_sign::{BodyHash, PreCanonical};
use crate::mail::transparent;

/// The soft line break of quoted-printable: lets encoded pieces be joined anywhere.
const SOFT_BREAK: &str = "=\r\n";

/// The multipart body of an issue: fixed text with a place for the recipient's link
/// between every two chunks.
#[derive(Debug)]
pub struct BodyLayout {
    text: String,
    /// Byte ranges of the chunks in `text`; each starts at a line start.
    chunks: Vec<std::ops::Range<usize>>,
    /// Each chunk in SMTP's transparent form (leading dots doubled), made once per issue
    /// so a copy's DATA only scans its own header block and link.
    transparent: Vec<String>,
    ascii: bool,
    /// What fills the place before each chunk (the first chunk's entry is unused).
    slots: Vec<Slot>,
}

/// What a per-copy place in the body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The recipient's unsubscribe URL.
    Unsubscribe,
    /// The recipient's reader token (vote links, per-reader click links).
    Reader,
}

impl BodyLayout {
    /// The `multipart/alternative` body with a text and an HTML part, each quoted-printable
    /// encoded already and split where the link goes.
    pub fn new(boundary: &str, text_pieces: &[String], html_pieces: &[String]) -> BodyLayout {
        let unsub = |n: usize| vec![Slot::Unsubscribe; n.saturating_sub(1)];
        BodyLayout::with_slots(
            boundary,
            (text_pieces, &unsub(text_pieces.len())),
            (html_pieces, &unsub(html_pieces.len())),
        )
    }

    /// The same with a slot kind for each place: `slots[i]` goes between piece `i` and
    /// piece `i + 1` of its part.
    pub fn with_slots(
        boundary: &str,
        (text_pieces, text_slots): (&[String], &[Slot]),
        (html_pieces, html_slots): (&[String], &[Slot]),
    ) -> BodyLayout {
        let mut slots = vec![Slot::Unsubscribe];
        let mut text = String::with_capacity(
            text_pieces
                .iter()
                .chain(html_pieces)
                .map(String::len)
                .sum::<usize>()
                + 512,
        );
        let mut chunks = Vec::new();
        let mut start = 0;
        for (content_type, pieces, kinds) in [
            ("text/plain; charset=utf-8", text_pieces, text_slots),
            ("text/html; charset=utf-8", html_pieces, html_slots),
        ] {
            text.push_str("--");
            text.push_str(boundary);
            text.push_str("\r\nContent-Type: ");
            text.push_str(content_type);
            text.push_str("\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n");
            for (i, piece) in pieces.iter().enumerate() {
                if i > 0 {
                    // The link goes here, on lines of its own.
                    chunks.push(start..text.len());
                    slots.push(kinds.get(i - 1).copied().unwrap_or(Slot::Unsubscribe));
                    start = text.len();
                }
                text.push_str(piece);
                if i + 1 < pieces.len() {
                    text.push_str(SOFT_BREAK);
                }
            }
            text.push_str("\r\n");
        }
        text.push_str("--");
        text.push_str(boundary);
        text.push_str("--\r\n");
        chunks.push(start..text.len());
        let ascii = text.is_ascii();
        let transparent = chunks
            .iter()
            .map(|r| transparent::at_line_start(&text[r.clone()]))
            .collect();
        BodyLayout {
            text,
            chunks,
            transparent,
            ascii,
            slots,
        }
    }

    /// No body beyond the head: for a message built whole elsewhere.
    fn empty() -> BodyLayout {
        BodyLayout {
            text: String::new(),
            chunks: std::iter::once(0..0).collect(),
            transparent: vec![String::new()],
            ascii: true,
            slots: vec![Slot::Unsubscribe],
        }
    }

    fn chunks(&self) -> impl Iterator<Item = &str> {
        self.chunks.iter().map(|r| &self.text[r.clone()])
    }

    /// Length of the part every recipient shares before their first link.
    pub fn shared_prefix_len(&self) -> usize {
        self.chunks[0].len()
    }

    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The canonical chunks and the body hash up to the first link, for DKIM.
    pub fn prepare_hash(&self) -> BodyHashPlan {
        let pre: Vec<PreCanonical> = self
            .chunks()
            .map(|c| PreCanonical::new(c.as_bytes()))
            .collect();
        let mut prefix = BodyHash::default();
        prefix.update_pre(&pre[0], self.chunks().next().unwrap_or("").as_bytes());
        BodyHashPlan { pre, prefix }
    }
}

/// What each copy's body hash continues from.
#[derive(Clone)]
pub struct BodyHashPlan {
    pre: Vec<PreCanonical>,
    prefix: BodyHash,
}

impl std::fmt::Debug for BodyHashPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyHashPlan")
            .field("chunks", &self.pre.len())
            .finish_non_exhaustive()
    }
}

impl BodyHashPlan {
    /// The body hash of `layout` with `link` (the encoded link line) in every place.
    pub fn body_hash(&self, layout: &BodyLayout, link: &str) -> [u8; 32] {
        self.body_hash_with(layout, link, "")
    }

    /// The same with `reader` (the encoded reader token) in the reader slots.
    pub fn body_hash_with(&self, layout: &BodyLayout, link: &str, reader: &str) -> [u8; 32] {
        let mut hash = self.prefix.clone();
        for ((pre, chunk), slot) in self
            .pre
            .iter()
            .zip(layout.chunks())
            .zip(&layout.slots)
            .skip(1)
        {
            let fill = match slot {
                Slot::Unsubscribe => link,
                Slot::Reader => reader,
            };
            hash.update(fill.as_bytes());
            hash.update_pre(pre, chunk.as_bytes());
        }
        hash.finish()
    }
}

/// One recipient's complete message.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    envelope: Envelope,
    /// Every header line (DKIM-Signature first when signed) and the empty line after them.
    head: String,
    /// The recipient's link, quoted-printable encoded, with the soft break that ends it.
    link: String,
    /// The recipient's reader token, encoded the same way, for the reader slots.
    reader: String,
    body: Arc<BodyLayout>,
}

impl OutgoingMessage {
    pub fn new(envelope: Envelope, head: String, link: String, body: Arc<BodyLayout>) -> Self {
        OutgoingMessage {
            envelope,
            head,
            link,
            reader: String::new(),
            body,
        }
    }

    /// The same with `reader` (encoded like the link) in the body's reader slots.
    pub fn with_reader(mut self, reader: String) -> Self {
        self.reader = reader;
        self
    }

    fn fill(&self, i: usize) -> &str {
        if i == 0 {
            return "";
        }
        match self.body.slots.get(i) {
            Some(Slot::Reader) => &self.reader,
            _ => &self.link,
        }
    }

    /// A message built whole (a confirmation mail), sent the way an issue's copy is.
    pub fn whole(envelope: Envelope, text: String) -> Self {
        OutgoingMessage {
            envelope,
            head: text,
            link: String::new(),
            reader: String::new(),
            body: Arc::new(BodyLayout::empty()),
        }
    }

    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The message as consecutive pieces of text, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.head.as_str()).chain(
            self.body
                .chunks()
                .enumerate()
                .flat_map(move |(i, c)| [self.fill(i), c]),
        )
    }

    /// The message as consecutive pieces, each with its SMTP-transparent form when that
    /// was made once per issue (the shared chunks, valid where they start a line).
    pub fn data_segments(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        std::iter::once((self.head.as_str(), None)).chain(
            self.body
                .chunks()
                .zip(&self.body.transparent)
                .enumerate()
                .flat_map(move |(i, (c, t))| [(self.fill(i), None), (c, Some(t.as_str()))]),
        )
    }

    /// True when every byte is 7-bit (otherwise the server must offer 8BITMIME).
    pub fn is_ascii(&self) -> bool {
        self.body.ascii && self.head.is_ascii() && self.link.is_ascii() && self.reader.is_ascii()
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.head.len()
            + self.body.len()
            + (1..self.body.chunks.len())
                .map(|i| self.fill(i).len())
                .sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole message in one buffer (for files and checks; sending writes the segments).
    pub fn formatted(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for s in self.segments() {
            out.extend_from_slice(s.as_bytes());
        }
        out
    }
}

/// The link line for a URL: quoted-printable (only `=` needs escaping in a URL), soft breaks
/// keeping lines short, and the soft break that joins it to the text after it.
pub fn encode_link(url: &str, max_line: usize) -> String {
    let mut out = String::with_capacity(url.len() + 16);
    let mut line = 0;
    for c in url.chars() {
        let width = if c == '=' { 3 } else { c.len_utf8() };
        if line + width > max_line {
            out.push_str(SOFT_BREAK);
            line = 0;
        }
        if c == '=' {
            out.push_str("=3D");
        } else {
            out.push(c);
        }
        line += width;
    }
    out.push_str(SOFT_BREAK);
    out
}
