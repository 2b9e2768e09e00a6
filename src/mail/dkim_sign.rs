//! DKIM signatures (RFC 6376, relaxed/relaxed; `rsa-sha256`, and `ed25519-sha256` per
//! RFC 8463) computed from bytes that are already laid out for sending: nothing is parsed
//! back. The body hash is a clonable state, so the part of the body every recipient shares
//! is canonicalised and hashed once per issue.

use aws_lc_rs::digest;
use base64::Engine as _;

/// Every header a signature covers, in `h=` order. Gmail and Yahoo honour RFC 8058 one-click
/// unsubscribe only when both List-Unsubscribe headers are signed; MIME-Version and
/// Content-Type are signed so the body cannot be re-labelled.
pub const SIGNED_HEADERS: [&str; 11] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
];

/// Headers named once more than they occur (RFC 6376 §8.15): the extra name stands for an
/// absent header, so a copy with a second one added no longer verifies.
pub const OVERSIGNED_HEADERS: [&str; 5] = [
    "From",
    "Subject",
    "To",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// Longest run of base64 on one line of the folded `b=` tag.
const B64_LINE: usize = 72;
/// Longest line of the signature header otherwise (RFC 5322's recommended 78, less margin).
const LINE_MAX: usize = 76;

/// A private key that signs the canonical header data, held by aws-lc-rs (whose RSA uses
/// the processor's AVX-512 IFMA code where there is one, and is no slower than ring where
/// there is not; see docs/performance-dkim.md).
pub enum SigningKey {
    Rsa {
        key: aws_lc_rs::rsa::KeyPair,
        rng: aws_lc_rs::rand::SystemRandom,
    },
    Ed25519(aws_lc_rs::signature::Ed25519KeyPair),
}

impl SigningKey {
    /// An RSA key from its PKCS#1 (`RSAPrivateKey`) DER encoding.
    pub fn rsa_from_pkcs1_der(der: &[u8]) -> Result<SigningKey, aws_lc_rs::error::KeyRejected> {
        aws_lc_rs::rsa::KeyPair::from_der(der).map(Self::rsa)
    }

    /// An RSA key from its PKCS#8 DER encoding.
    pub fn rsa_from_pkcs8_der(der: &[u8]) -> Result<SigningKey, aws_lc_rs::error::KeyRejected> {
        aws_lc_rs::rsa::KeyPair::from_pkcs8(der).map(Self::rsa)
    }

    fn rsa(key: aws_lc_rs::rsa::KeyPair) -> SigningKey {
        SigningKey::Rsa {
            key,
            rng: aws_lc_rs::rand::SystemRandom::new(),
        }
    }

    /// An Ed25519 key from its 32-byte seed.
    pub fn ed25519_from_seed(seed: &[u8; 32]) -> Result<SigningKey, String> {
        aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .map(SigningKey::Ed25519)
            .map_err(|e| e.to_string())
    }

    /// An Ed25519 key from its PKCS#8 DER encoding (v1 as OpenSSL writes it, or v2).
    pub fn ed25519_from_pkcs8_der(der: &[u8]) -> Result<SigningKey, aws_lc_rs::error::KeyRejected> {
        aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(SigningKey::Ed25519)
    }

    /// The public key as published in the DKIM record's `p=`: for RSA the DER
    /// SubjectPublicKeyInfo, for Ed25519 the raw 32 bytes (RFC 8463 §4).
    pub fn public_key_for_dns(&self) -> Vec<u8> {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::signature::KeyPair as _;
        match self {
            SigningKey::Rsa { key, .. } => key
                .public_key()
                .as_der()
                .expect("a parsed RSA key's public half encodes")
                .as_ref()
                .to_vec(),
            SigningKey::Ed25519(key) => key.public_key().as_ref().to_vec(),
        }
    }

    /// The RSA modulus in bits (0 for Ed25519).
    pub fn rsa_bits(&self) -> usize {
        match self {
            SigningKey::Rsa { key, .. } => key.public_modulus_len() * 8,
            SigningKey::Ed25519(_) => 0,
        }
    }

    /// The `a=` tag.
    pub fn algorithm(&self) -> &'static str {
        match self {
            SigningKey::Rsa { .. } => "rsa-sha256",
            SigningKey::Ed25519(_) => "ed25519-sha256",
        }
    }

    /// Signs the canonical header data. RSA signs its SHA-256 (RSASSA-PKCS1-v1_5); Ed25519
    /// signs the SHA-256 digest itself, as RFC 8463 §3 specifies.
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Rsa { key, rng } => {
                let mut sig = vec![0; key.public_modulus_len()];
                key.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, rng, data, &mut sig)
                    .expect("RSA signing with a validated key and a buffer of its size");
                sig
            }
            SigningKey::Ed25519(key) => {
                let hash = digest::digest(&digest::SHA256, data);
                key.sign(hash.as_ref()).as_ref().to_vec()
            }
        }
    }
}

/// Relaxed header canonicalisation (RFC 6376 §3.4.2) of one header field, given its raw text
/// as it appears in the message (`Name: value`, folded, with or without the final CRLF):
/// lower-case name, unfolded value with whitespace runs reduced to one space and trimmed.
pub fn relaxed_header(raw: &str, out: &mut Vec<u8>) {
    let raw = raw.strip_suffix("\r\n").unwrap_or(raw);
    let (name, value) = raw.split_once(':').unwrap_or((raw, ""));
    out.extend(
        name.trim_end_matches([' ', '\t'])
            .bytes()
            .map(|b| b.to_ascii_lowercase()),
    );
    out.push(b':');
    let mut space = false;
    let mut started = false;
    for &b in value.as_bytes() {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => space = started,
            _ => {
                if space {
                    out.push(b' ');
                    space = false;
                }
                started = true;
                out.push(b);
            }
        }
    }
}

/// Where relaxed body canonicalisation (RFC 6376 §3.4.4) stands between two pieces of input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CanonState {
    /// Line ends not yet emitted: empty lines at the end of the body are dropped.
    pending_lines: usize,
    /// Whitespace in the current line not yet emitted (one space, unless the line ends).
    pending_space: bool,
    /// A CR was the last byte; it is part of a line end if LF follows.
    pending_cr: bool,
    /// Anything at all was emitted.
    any: bool,
}

impl CanonState {
    /// Whether input fed now is canonicalised as it would be from an empty state, apart
    /// from the line ends still owed before its first content: nothing depends on the
    /// current line's earlier content, only on a pending space or CR.
    fn takes_precanonical(&self) -> bool {
        !self.pending_space && !self.pending_cr
    }

    /// Canonicalises `input`, appending to `out`.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            match b {
                b'\n' => {
                    self.pending_cr = false;
                    self.pending_space = false;
                    self.pending_lines += 1;
                }
                b'\r' => {
                    if self.pending_cr {
                        self.content(b'\r', out);
                    }
                    self.pending_cr = true;
                }
                b' ' | b'\t' => {
                    if self.pending_cr {
                        self.content(b'\r', out);
                        self.pending_cr = false;
                    }
                    self.pending_space = true;
                }
                _ => {
                    if self.pending_cr {
                        self.content(b'\r', out);
                        self.pending_cr = false;
                    }
                    self.content(b, out);
                }
            }
        }
    }

    fn content(&mut self, b: u8, out: &mut Vec<u8>) {
        for _ in 0..self.pending_lines {
            out.extend_from_slice(b"\r\n");
        }
        self.pending_lines = 0;
        if self.pending_space {
            out.push(b' ');
            self.pending_space = false;
        }
        out.push(b);
        self.any = true;
    }

    /// What is still owed at the end of the body: the final line's CRLF (added if missing).
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            self.content(b'\r', out);
        }
        if self.any {
            out.extend_from_slice(b"\r\n");
        }
        *self = CanonState::default();
    }
}

/// A piece of body text canonicalised ahead of time, as if it began a line. Feeding it at a
/// line start costs only the hashing of its canonical bytes.
#[derive(Debug, Clone)]
pub struct PreCanonical {
    bytes: Vec<u8>,
    /// The state after the piece, had it been fed from an empty state.
    exit: CanonState,
}

impl PreCanonical {
    pub fn new(raw: &[u8]) -> PreCanonical {
        let mut state = CanonState::default();
        let mut bytes = Vec::with_capacity(raw.len());
        state.feed(raw, &mut bytes);
        PreCanonical { bytes, exit: state }
    }
}

/// The running `bh=` hash of a relaxed-canonicalised body. Clone it to continue from a
/// shared prefix.
#[derive(Clone)]
pub struct BodyHash {
    ctx: digest::Context,
    state: CanonState,
    scratch: Vec<u8>,
}

impl Default for BodyHash {
    fn default() -> Self {
        BodyHash {
            ctx: digest::Context::new(&digest::SHA256),
            state: CanonState::default(),
            scratch: Vec::new(),
        }
    }
}

impl BodyHash {
    /// Canonicalises and hashes raw body bytes (any split across calls is fine).
    pub fn update(&mut self, raw: &[u8]) {
        self.scratch.clear();
        self.state.feed(raw, &mut self.scratch);
        self.ctx.update(&self.scratch);
    }

    /// Hashes a pre-canonicalised piece whose raw text is `raw`. Only hashing is done
    /// unless whitespace or a CR is pending before it (a personal link or token ends in
    /// neither, so the layout's pieces after them are never canonicalised per copy); then
    /// `raw` is canonicalised here.
    pub fn update_pre(&mut self, pre: &PreCanonical, raw: &[u8]) {
        if !self.state.takes_precanonical() {
            return self.update(raw);
        }
        if pre.exit.any {
            for _ in 0..self.state.pending_lines {
                self.ctx.update(b"\r\n");
            }
            self.ctx.update(&pre.bytes);
            self.state = pre.exit;
        } else {
            self.state.pending_lines += pre.exit.pending_lines;
            self.state.pending_space = pre.exit.pending_space;
            self.state.pending_cr = pre.exit.pending_cr;
        }
    }

    /// The body hash (SHA-256 of the canonical body).
    pub fn finish(mut self) -> [u8; 32] {
        self.scratch.clear();
        self.state.finish(&mut self.scratch);
        self.ctx.update(&self.scratch);
        self.ctx
            .finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes")
    }
}

/// What a signature is made for: the signing domain, selector and key.
pub struct SignatureSpec<'a> {
    pub key: &'a SigningKey,
    pub domain: &'a str,
    pub selector: &'a str,
    /// `t=`, seconds since the epoch.
    pub timestamp: i64,
}

/// The `h=` tag: every signed header, then the over-signed ones again.
pub fn header_list() -> String {
    SIGNED_HEADERS
        .iter()
        .chain(OVERSIGNED_HEADERS.iter())
        .copied()
        .collect::<Vec<_>>()
        .join(":")
}

/// The complete DKIM-Signature header line (with its CRLF) for a message whose header fields
/// are `fields` (raw text of each, top to bottom) and whose body hash is `body_hash`.
/// `h=` lists `names`; for each name the bottom-most field not yet used is signed, and a
/// name with none left adds nothing (that is what over-signing relies on).
pub fn signature_header(
    spec: &SignatureSpec<'_>,
    fields: &[&str],
    names: &str,
    body_hash: &[u8; 32],
) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut header = format!(
        "DKIM-Signature: v=1; a={}; c=relaxed/relaxed;\r\n\td={}; s={}; t={};\r\n\th=",
        spec.key.algorithm(),
        spec.domain,
        spec.selector,
        spec.timestamp,
    );
    // h= folded at its colons, where RFC 6376 allows whitespace.
    let mut line = "\th=".len();
    for (i, name) in names.split(':').enumerate() {
        if i > 0 {
            header.push(':');
            line += 1;
        }
        if line + name.len() + 1 > LINE_MAX {
            header.push_str("\r\n\t ");
            line = 2;
        }
        header.push_str(name);
        line += name.len();
    }
    header.push_str(";\r\n\tbh=");
    header.push_str(&b64.encode(body_hash));
    header.push_str(";\r\n\tb=");
    let mut data = Vec::with_capacity(1024);
    let mut used = vec![false; fields.len()];
    for name in names.split(':').map(str::trim) {
        let found = (0..fields.len()).rev().find(|&i| {
            !used[i]
                && fields[i]
                    .split_once(':')
                    .is_some_and(|(n, _)| n.trim_end().eq_ignore_ascii_case(name))
        });
        if let Some(i) = found {
            used[i] = true;
            relaxed_header(fields[i], &mut data);
            data.extend_from_slice(b"\r\n");
        }
    }
    // The signature header itself, with an empty b= and no final CRLF (RFC 6376 §3.7).
    relaxed_header(&header, &mut data);
    let signature = b64.encode(spec.key.sign(&data));
    for (i, line) in signature.as_bytes().chunks(B64_LINE).enumerate() {
        if i > 0 {
            header.push_str("\r\n\t ");
        }
        header.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
    }
    header.push_str("\r\n");
    header
}

/// The header fields of a complete message (each with its continuation lines) and the
/// offset where its body starts. For messages from elsewhere; the layout knows its own.
pub fn split_message(raw: &str) -> (Vec<&str>, usize) {
    let mut fields: Vec<&str> = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < raw.len() {
        let end = raw[pos..].find("\r\n").map_or(raw.len(), |i| pos + i + 2);
        let line = &raw[pos..end];
        if line == "\r\n" {
            if start < pos {
                fields.push(&raw[start..pos]);
            }
            return (fields, end);
        }
        let continuation = line.starts_with([' ', '\t']);
        if !continuation && start < pos {
            fields.push(&raw[start..pos]);
            start = pos;
        }
        pos = end;
    }
    if start < pos {
        fields.push(&raw[start..pos]);
    }
    (fields, raw.len())
}

/// Signs a complete message from elsewhere, covering `names` (an `h=` list), and returns
/// the DKIM-Signature header line to put on top of it.
pub fn sign_message(spec: &SignatureSpec<'_>, raw: &str, names: &str) -> String {
    let (fields, body_start) = split_message(raw);
    let mut body = BodyHash::default();
    body.update(&raw.as_bytes()[body_start..]);
    signature_header(spec, &fields, names, &body.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RSASSA-PKCS1-v1_5 is deterministic: the signer must make byte for byte the signature
    /// ring made over the same data and key before the move to aws-lc-rs (and that
    /// `openssl dgst -sha256 -sign` makes), so the switch changes no byte of any message.
    #[test]
    fn rsa_signatures_are_the_bytes_ring_made() {
        use rustls_pki_types::pem::PemObject as _;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dkim/");
        let pem = std::fs::read(format!("{dir}rsa2048-pkcs1.pem")).unwrap();
        let der = rustls_pki_types::PrivatePkcs1KeyDer::from_pem_slice(&pem).unwrap();
        let key = SigningKey::rsa_from_pkcs1_der(der.secret_pkcs1_der()).unwrap();
        assert_eq!(key.rsa_bits(), 2048);
        let data = std::fs::read(format!("{dir}signed-data.txt")).unwrap();
        let ring_made = std::fs::read_to_string(format!("{dir}rsa2048-ring.sig.b64")).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(b64.encode(key.sign(&data)), ring_made.trim());
    }

    fn canonical_body(raw: &[u8]) -> Vec<u8> {
        let mut state = CanonState::default();
        let mut out = Vec::new();
        state.feed(raw, &mut out);
        state.finish(&mut out);
        out
    }

    #[test]
    fn body_canonicalisation_follows_the_rfc_examples() {
        // RFC 6376 §3.4.6, relaxed body.
        assert_eq!(
            canonical_body(b" C \r\nD \t E\r\n\r\n\r\n"),
            b" C\r\nD E\r\n"
        );
        assert_eq!(canonical_body(b""), b"");
        assert_eq!(canonical_body(b"\r\n\r\n"), b"");
        assert_eq!(canonical_body(b"a"), b"a\r\n");
        assert_eq!(canonical_body(b"a \r\n \r\nb"), b"a\r\n\r\nb\r\n");
    }

    #[test]
    fn header_canonicalisation_follows_the_rfc_example() {
        let mut out = Vec::new();
        relaxed_header("A: X\r\n", &mut out);
        out.extend_from_slice(b"\r\n");
        relaxed_header("B : Y\t\r\n\tZ  \r\n", &mut out);
        assert_eq!(out, b"a:X\r\nb:Y Z");
    }

    #[test]
    fn hashing_in_pieces_matches_hashing_at_once() {
        let body = "Line one  \r\n\r\n.dot\tand  tabs\r\n=\rx\r\r\n\r\nmore \r\n\r\n\r\n";
        let mut whole = BodyHash::default();
        whole.update(body.as_bytes());
        let whole = whole.finish();
        for split in 0..=body.len() {
            let (a, b) = body.as_bytes().split_at(split);
            let mut h = BodyHash::default();
            h.update(a);
            h.update_pre(&PreCanonical::new(b), b);
            assert_eq!(h.finish(), whole, "split at {split}");
        }
    }

    #[test]
    fn headers_are_split_with_their_continuation_lines() {
        let raw = "From: a\r\nSubject: one\r\n two\r\nTo: b\r\n\r\nbody\r\n";
        let (fields, start) = split_message(raw);
        assert_eq!(
            fields,
            ["From: a\r\n", "Subject: one\r\n two\r\n", "To: b\r\n"]
        );
        assert_eq!(&raw[start..], "body\r\n");
    }
}
