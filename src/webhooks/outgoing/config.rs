//! The `webhooks:` list of the config file: where to announce, which events, and the
//! environment variable holding each receiver's signing secret.

use std::time::Duration;

use serde::Deserialize;

/// Every event a receiver can ask for.
pub const EVENT_TYPES: [&str; 8] = [
    "subscriber.pending",
    "subscriber.confirmed",
    "subscriber.unsubscribed",
    "subscriber.bounced",
    "subscriber.complained",
    "issue.created",
    "issue.completed",
    "issue.paused",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    url: String,
    events: Vec<String>,
    secret_env: String,
    #[serde(default)]
    retry_base: Option<String>,
}

/// One receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    /// The event types it receives, from [`EVENT_TYPES`].
    pub events: Vec<String>,
    /// The environment variable holding the HMAC key its deliveries are signed with.
    pub secret_env: String,
    /// The wait before the first retry; it doubles with each failure, up to an hour.
    pub retry_base: Duration,
}

/// Checks the raw list; an error names the entry's field and the reason.
pub fn validate(raw: Vec<RawWebhook>) -> Result<Vec<WebhookConfig>, (&'static str, String)> {
    let mut out: Vec<WebhookConfig> = Vec::with_capacity(raw.len());
    for (i, w) in raw.into_iter().enumerate() {
        let at = |what: &str| format!("entry {} ({}): {what}", i + 1, w.url);
        let url = w.url.trim().to_owned();
        let parsed = url.parse::<axum::http::Uri>();
        let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
        if !scheme_ok || parsed.map(|u| u.host().is_none()).unwrap_or(true) {
            return Err((
                "webhooks.url",
                at("must be an http:// or https:// URL with a host"),
            ));
        }
        if out.iter().any(|o| o.url == url) {
            return Err(("webhooks.url", at("the same URL is listed twice")));
        }
        if w.events.is_empty() {
            return Err((
                "webhooks.events",
                at(&format!("list at least one of {}", EVENT_TYPES.join(", "))),
            ));
        }
        let mut events = Vec::new();
        for e in &w.events {
            if e == "*" {
                events = EVENT_TYPES.iter().map(|s| s.to_string()).collect();
                break;
            }
            if !EVENT_TYPES.contains(&e.as_str()) {
                return Err((
                    "webhooks.events",
                    at(&format!(
                        "`{e}` is not an event; the events are {} (or `*` for all)",
                        EVENT_TYPES.join(", ")
                    )),
                ));
            }
            if !events.contains(e) {
                events.push(e.clone());
            }
        }
        if w.secret_env.trim().is_empty() {
            return Err((
                "webhooks.secret_env",
                at("must name an environment variable"),
            ));
        }
        let retry_base = match &w.retry_base {
            None => Duration::from_secs(10),
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if d >= Duration::from_millis(100) => d,
                Ok(_) => return Err(("webhooks.retry_base", at("must be at least 100ms"))),
                Err(e) => {
                    return Err((
                        "webhooks.retry_base",
                        at(&format!("`{s}` is not a duration such as 10s: {e}")),
                    ))
                }
            },
        };
        out.push(WebhookConfig {
            url,
            events,
            secret_env: w.secret_env,
            retry_base,
        });
    }
    Ok(out)
}
