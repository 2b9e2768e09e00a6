//! The signup form as HTML: the snippet `verdicts signup-form` prints for any site, and the
//! heart of the endpoint's own `GET /subscribe` page. Plain HTML that works without
//! JavaScript; the `website` field is a honeypot hidden from people (and from screen
//! readers) that form-filling bots tend to fill.

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The form, posting to `action` (the endpoint's `/subscribe`).
pub fn form_html(action: &str, newsletter_name: &str) -> String {
    format!(
        r#"<form method="post" action="{action}" class="verdicts-signup">
  <p><label for="verdicts-email">Email address</label><br>
  <input id="verdicts-email" type="email" name="email" required autocomplete="email" maxlength="254"></p>
  <p><label for="verdicts-name">Name (optional)</label><br>
  <input id="verdicts-name" type="text" name="name" autocomplete="name" maxlength="200"></p>
  <div style="position:absolute;left:-10000px;width:1px;height:1px;overflow:hidden" aria-hidden="true">
  <label for="verdicts-website">Leave this field empty</label>
  <input id="verdicts-website" type="text" name="website" tabindex="-1" autocomplete="off"></div>
  <p><button type="submit">Subscribe to {name}</button></p>
  <p><small>We will send one message to confirm the address. Nothing else until you confirm.</small></p>
</form>
"#,
        action = escape(action),
        name = escape(newsletter_name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_posts_the_three_fields_and_escapes_names() {
        let html = form_html("https://v.example/subscribe", "A & B <weekly>");
        assert!(html.contains(r#"<form method="post" action="https://v.example/subscribe""#));
        for field in [r#"name="email""#, r#"name="name""#, r#"name="website""#] {
            assert!(html.contains(field), "{field}");
        }
        assert!(html.contains("Subscribe to A &amp; B &lt;weekly&gt;"));
        assert!(!html.contains("<script"));
    }
}
