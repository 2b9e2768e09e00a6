//! One recipient's copy as the rules see it: parsed back from the bytes that would go on
//! the wire, with the links and images of its HTML part.

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::RawKind;
use html5ever::tokenizer::{
    BufferQueue, TagKind, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};

/// One recipient's copy, parsed back from the bytes that would go on the wire.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Every header, unfolded and decoded, in order.
    pub headers: Vec<(String, String)>,
    /// The decoded text/plain part.
    pub text: Option<String>,
    /// The decoded text/html part.
    pub html: Option<String>,
    /// The recipient's unsubscribe URL, as the body and List-Unsubscribe should carry it.
    pub unsubscribe_url: String,
}

impl Sample {
    pub fn parse(raw: &[u8], unsubscribe_url: &str) -> Result<Sample, mailparse::MailParseError> {
        let mail = mailparse::parse_mail(raw)?;
        let headers = mail
            .headers
            .iter()
            .map(|h| (h.get_key(), h.get_value()))
            .collect();
        let mut sample = Sample {
            headers,
            text: None,
            html: None,
            unsubscribe_url: unsubscribe_url.to_owned(),
        };
        sample.collect_parts(&mail)?;
        Ok(sample)
    }

    fn collect_parts(
        &mut self,
        part: &mailparse::ParsedMail<'_>,
    ) -> Result<(), mailparse::MailParseError> {
        if part.subparts.is_empty() {
            let slot = match part.ctype.mimetype.as_str() {
                "text/plain" => &mut self.text,
                "text/html" => &mut self.html,
                _ => return Ok(()),
            };
            if slot.is_none() {
                *slot = Some(part.get_body()?);
            }
        }
        for sub in &part.subparts {
            self.collect_parts(sub)?;
        }
        Ok(())
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
pub(super) struct Anchor {
    pub(super) href: String,
    pub(super) text: String,
    pub(super) hidden: bool,
}

#[derive(Debug)]
pub(super) struct Image {
    pub(super) src: String,
    pub(super) alt: Option<String>,
}

/// The links and images of an HTML document.
#[derive(Debug, Default)]
pub(super) struct HtmlScan {
    pub(super) anchors: Vec<Anchor>,
    pub(super) images: Vec<Image>,
    open_anchor: Option<Anchor>,
}

fn is_hidden(style: &str) -> bool {
    let s: String = style
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    s.contains("display:none") || s.contains("visibility:hidden") || s.contains("font-size:0")
}

impl TokenSink for HtmlScan {
    type Handle = ();

    fn process_token(&mut self, token: Token, _line: u64) -> TokenSinkResult<()> {
        match token {
            Token::TagToken(tag) => {
                let attr = |name: &str| {
                    tag.attrs
                        .iter()
                        .find(|a| &*a.name.local == name)
                        .map(|a| a.value.to_string())
                };
                match (tag.kind, &*tag.name) {
                    (TagKind::StartTag, "a") => {
                        if let Some(done) = self.open_anchor.take() {
                            self.anchors.push(done);
                        }
                        if let Some(href) = attr("href") {
                            self.open_anchor = Some(Anchor {
                                href: href.trim().to_owned(),
                                text: String::new(),
                                hidden: attr("style").is_some_and(|s| is_hidden(&s)),
                            });
                        }
                    }
                    (TagKind::EndTag, "a") => {
                        if let Some(done) = self.open_anchor.take() {
                            self.anchors.push(done);
                        }
                    }
                    (TagKind::StartTag, "img") => {
                        let alt = attr("alt");
                        if let (Some(a), Some(alt)) = (&mut self.open_anchor, &alt) {
                            a.text.push_str(alt);
                        }
                        self.images.push(Image {
                            src: attr("src").unwrap_or_default().trim().to_owned(),
                            alt,
                        });
                    }
                    (TagKind::StartTag, "style" | "script") => {
                        return TokenSinkResult::RawData(RawKind::Rawtext)
                    }
                    _ => {}
                }
            }
            Token::CharacterTokens(t) => {
                if let Some(a) = &mut self.open_anchor {
                    a.text.push_str(&t);
                }
            }
            _ => {}
        }
        TokenSinkResult::Continue
    }

    fn end(&mut self) {
        if let Some(done) = self.open_anchor.take() {
            self.anchors.push(done);
        }
    }
}

pub(super) fn scan_html(html: &str) -> HtmlScan {
    let mut queue = BufferQueue::default();
    queue.push_back(StrTendril::from_slice(html));
    let mut tokenizer = Tokenizer::new(HtmlScan::default(), TokenizerOpts::default());
    let _ = tokenizer.feed(&mut queue);
    tokenizer.end();
    tokenizer.sink
}
