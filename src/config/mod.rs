//! The operator's configuration file (`config/newsletter.yaml`): parsed strictly, with
//! relative paths resolved against the file's own folder so the binary can run from anywhere.

pub mod provider_webhooks;
pub mod relays;
pub mod retention;
pub mod schedule;
pub mod signup;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;

use crate::config::relays::{DomainCap, RawDomainCap, RawRelays, RelayLimits, RelayRole, Warmup};
use crate::config::schedule::SlotSchedule;
use crate::config::signup::{RawSignup, SignupConfig};
use crate::mail::address::SubscriberEmail;

mod check;

/// Where the configuration is looked for when neither `--config` nor `VERDICTS_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/newsletter.yaml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "there is no config file {path} (looked in {folder}{relative}); run verdicts in the \
         newsletter's folder or name the file with --config PATH or the VERDICTS_CONFIG \
         environment variable",
        relative = if .path.is_relative() { ", as the path is relative to the current folder" } else { "" }
    )]
    NotFound { path: PathBuf, folder: PathBuf },
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{path}: field `{field}`: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    newsletter: RawNewsletter,
    content_dir: PathBuf,
    state_dir: PathBuf,
    schedule: RawSchedule,
    smtp: RawRelays,
    web: RawWeb,
    secret_env: String,
    #[serde(default)]
    previous_secret_envs: Vec<String>,
    #[serde(default)]
    secret_file: Option<PathBuf>,
    #[serde(default)]
    dkim: Option<RawDkim>,
    #[serde(default)]
    inbound: Option<crate::inbound::config::RawInbound>,
    #[serde(default)]
    signup: RawSignup,
    #[serde(default)]
    site: Option<RawSite>,
    #[serde(default)]
    retention: retention::RawRetention,
    #[serde(default)]
    provider_webhooks: provider_webhooks::RawProviderWebhooks,
    #[serde(default)]
    domains: Option<std::collections::BTreeMap<String, RawDomainCap>>,
    #[serde(default)]
    webhooks: Vec<crate::webhooks::outgoing::config::RawWebhook>,
    #[serde(default)]
    tracking: crate::tracking::config::RawTracking,
    #[serde(default = "default_nice")]
    nice: i64,
}

fn default_nice() -> i64 {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    out_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNewsletter {
    name: String,
    from: String,
    base_url: String,
    postal_address: String,
    #[serde(default)]
    list_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: String,
    timezone: String,
    #[serde(default = "default_catch_up")]
    catch_up: String,
    #[serde(default)]
    on_empty: OnEmpty,
}

fn default_catch_up() -> String {
    "6h".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: String,
    port: u16,
    tls: TlsMode,
    #[serde(default)]
    username: Option<String>,
    #[serde(default = "default_password_env")]
    password_env: String,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default)]
    rate_per_second: u32,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default = "default_max_attempts")]
    max_attempts: u32,
    #[serde(default = "default_retry_base")]
    retry_base: String,
    #[serde(default = "default_give_up_after")]
    give_up_after: String,
    #[serde(default = "default_pause_max")]
    pause_max: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    role: Option<RelayRole>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    per_second: Option<u64>,
    #[serde(default)]
    per_hour: Option<u64>,
    #[serde(default)]
    per_day: Option<u64>,
    #[serde(default)]
    warmup: Option<Warmup>,
}

fn default_password_env() -> String {
    "VERDICTS_SMTP_PASSWORD".into()
}
fn default_concurrency() -> usize {
    8
}
fn default_timeout() -> String {
    "30s".into()
}
fn default_max_attempts() -> u32 {
    5
}
fn default_retry_base() -> String {
    "2s".into()
}
fn default_give_up_after() -> String {
    "72h".into()
}
fn default_pause_max() -> String {
    "15m".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: String,
    #[serde(default = "default_header_timeout")]
    header_timeout: String,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: String,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_max_body_bytes")]
    max_body_bytes: usize,
    #[serde(default = "default_body_timeout")]
    body_timeout: String,
    #[serde(default = "default_min_body_rate")]
    min_body_rate: u64,
}

fn default_header_timeout() -> String {
    "10s".into()
}
fn default_idle_timeout() -> String {
    "60s".into()
}
fn default_max_connections() -> usize {
    256
}
fn default_max_body_bytes() -> usize {
    64 * 1024
}
fn default_body_timeout() -> String {
    "10s".into()
}
fn default_min_body_rate() -> u64 {
    1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDkim {
    domain: String,
    selector: String,
    key_file: PathBuf,
    #[serde(default)]
    algorithm: DkimAlgorithm,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    None,
    Starttls,
    Tls,
}

/// What the daemon does on a week with no new comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnEmpty {
    #[default]
    Skip,
    Send,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithm {
    #[default]
    Rsa,
    Ed25519,
}

/// The validated configuration. Paths are absolute (or relative to the working directory
/// when the config path itself was relative).
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub newsletter: Newsletter,
    pub content_dir: PathBuf,
    pub state_dir: PathBuf,
    pub schedule: ScheduleConfig,
    pub smtp: SmtpConfig,
    pub web_listen: std::net::SocketAddr,
    pub web: WebConfig,
    pub secret_env: String,
    /// Environment variables holding earlier secrets whose links still verify during a
    /// rotation (`previous_secret_envs`); nothing is signed with them.
    pub previous_secret_envs: Vec<String>,
    /// A file holding the signing secret, read instead of `secret_env`: one place that the
    /// daemon, CLI commands and a mail server's pipe all read (mode-checked).
    pub secret_file: Option<PathBuf>,
    /// `smtp.password_file`: a file holding the SMTP password, read instead of
    /// `smtp.password_env` (mode-checked).
    pub smtp_password_file: Option<PathBuf>,
    pub dkim: Option<DkimConfig>,
    /// Where bounces and mailto unsubscribes come back, and the list-hygiene rules.
    pub inbound: crate::inbound::config::InboundConfig,
    /// Where the public site is built (`site.out_dir`). When set, sending an issue and
    /// changing content rebuild it, and the web endpoint serves it.
    pub site_out_dir: Option<PathBuf>,
    pub signup: SignupConfig,
    /// How long history is kept (`retention:`, docs/operations.md).
    pub retention: retention::RetentionConfig,
    /// The relays' event webhooks the web process accepts (`provider_webhooks:`).
    pub provider_webhooks: provider_webhooks::ProviderWebhooksConfig,
    /// The relays that take over, in order, while the primary (`smtp`) cannot (`smtp:` as
    /// a list with `role: fallback` entries).
    pub fallbacks: Vec<SmtpConfig>,
    /// Caps per recipient domain (`domains:`, over the built-in defaults).
    pub domains: Vec<DomainCap>,
    /// Outgoing webhooks (`webhooks:`): who is told of changes to the list and to issues.
    pub webhooks: Vec<crate::webhooks::outgoing::config::WebhookConfig>,
    /// Votes, click counts and the operator's report (`tracking:`).
    pub tracking: crate::tracking::config::TrackingConfig,
    /// The CPU priority (Unix nice, 0..=19) that `send`, `issues retry` and the daemon take
    /// before they start sending (`nice`); 0 leaves it as it is.
    pub nice: i32,
}

#[derive(Debug, Clone)]
pub struct Newsletter {
    pub name: String,
    pub from: lettre::message::Mailbox,
    pub base_url: String,
    pub postal_address: String,
    pub list_id: String,
}

impl Newsletter {
    /// The domain of the From address: used for Message-IDs and the mailto unsubscribe.
    pub fn sender_domain(&self) -> &str {
        self.from.email.domain()
    }
}

#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    pub slots: SlotSchedule,
    pub catch_up: Duration,
    pub on_empty: OnEmpty,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub username: Option<String>,
    pub password_env: String,
    pub concurrency: usize,
    pub rate_per_second: u32,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub retry_base: Duration,
    /// How long after its creation an issue keeps retrying temporary failures (see
    /// docs/delivery-faults.md).
    pub give_up_after: Duration,
    /// The longest wait before the daemon resumes a paused issue.
    pub pause_max: Duration,
    /// The relay's name in the ledger, `issues show` and messages (`name`, else host:port).
    pub name: String,
    pub role: RelayRole,
    /// Trust anchors beyond the public ones (`ca_file`), for a relay whose certificate a
    /// private CA issued.
    pub extra_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// `password_file` of this relay (for the primary, also `Config::smtp_password_file`).
    pub password_file: Option<PathBuf>,
    /// Per-second, hourly and daily limits and the warm-up ramp, counted in the database.
    pub limits: RelayLimits,
}

/// The endpoint's limits (`web:`); see [`crate::web::server`].
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// How long a client has to send a request's headers (and a kept-alive connection to
    /// start its next request).
    pub header_timeout: Duration,
    /// How long a connection may move no bytes at all before it is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// How long a request's body may take to arrive, in total, however it trickles.
    pub body_timeout: Duration,
    /// The slowest a body may arrive (bytes per second, after its first second).
    pub min_body_rate: u64,
}

#[derive(Debug, Clone)]
pub struct DkimConfig {
    pub domain: String,
    pub selector: String,
    pub key_file: PathBuf,
    pub algorithm: DkimAlgorithm,
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                let parent = path.parent().unwrap_or(Path::new(""));
                let folder = std::path::absolute(parent).unwrap_or_else(|_| parent.to_owned());
                ConfigError::NotFound {
                    path: path.to_owned(),
                    folder,
                }
            } else {
                ConfigError::Read {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text as if it had been read from `path`: YAML into the raw sections,
    /// then each section checked and resolved on its own.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            line: e.location().map(|l| l.line()),
            message: e.to_string(),
        })?;
        let check = Check { path };
        if raw.secret_env.trim().is_empty() {
            return Err(check.invalid("secret_env", "must name an environment variable".into()));
        }
        let inbound = raw
            .inbound
            .unwrap_or_default()
            .validate(|p| check.resolve(p))
            .map_err(|(field, reason)| check.invalid(field, reason))?;
        let signup = SignupConfig::from_raw(raw.signup, |f, r| check.invalid(f, r))?;
        let mut relays = relays::order(
            raw.smtp,
            |r, role| check.smtp(r, role).map_err(ConfigError::into_field),
            |r: &SmtpConfig| r.name.as_str(),
        )
        .map_err(|(field, reason)| check.invalid(field, reason))?;
        let smtp = relays.remove(0);
        let smtp_password_file = smtp.password_file.clone();
        let domains = relays::domain_caps(raw.domains)
            .map_err(|(field, reason)| check.invalid(field, reason))?;
        let retention =
            retention::RetentionConfig::from_raw(raw.retention, |f, r| check.invalid(f, r))?;
        let provider_webhooks = provider_webhooks::ProviderWebhooksConfig::from_raw(
            raw.provider_webhooks,
            raw.web.max_body_bytes,
            |p| check.resolve(p),
            |f, r| check.invalid(f, r),
        )?;
        let webhooks = crate::webhooks::outgoing::config::validate(raw.webhooks)
            .map_err(|(field, reason)| check.invalid(field, reason))?;
        let tracking = crate::tracking::config::TrackingConfig::from_raw(raw.tracking)
            .map_err(|(field, reason)| check.invalid(field, reason))?;
        if !(0..=19).contains(&raw.nice) {
            return Err(check.invalid(
                "nice",
                format!(
                    "{} is out of range 0..=19 (a send can lower its priority, not raise it)",
                    raw.nice
                ),
            ));
        }
        Ok(Config {
            path: path.to_owned(),
            newsletter: check.newsletter(raw.newsletter)?,
            content_dir: check.resolve(&raw.content_dir),
            state_dir: check.resolve(&raw.state_dir),
            schedule: check.schedule(raw.schedule)?,
            smtp,
            web_listen: check.web_listen(&raw.web.listen)?,
            web: check.web(&raw.web)?,
            secret_env: raw.secret_env,
            previous_secret_envs: raw.previous_secret_envs,
            secret_file: raw.secret_file.as_deref().map(|p| check.resolve(p)),
            smtp_password_file,
            dkim: raw.dkim.map(|d| DkimConfig {
                domain: d.domain,
                selector: d.selector,
                key_file: check.resolve(&d.key_file),
                algorithm: d.algorithm,
            }),
            inbound,
            site_out_dir: raw.site.map(|s| check.resolve(&s.out_dir)),
            signup,
            retention,
            provider_webhooks,
            fallbacks: relays,
            domains,
            webhooks,
            tracking,
            nice: raw.nice as i32,
        })
    }

    /// The SQLite ledger and subscriber list.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("verdicts.db")
    }
}

/// Checks the raw sections of one config file; every error names the file and the field.
struct Check<'p> {
    path: &'p Path,
}

/// Folds `dir/../x` into `x` without touching the file system, so messages show
/// `content/comparisons`, not `config/../content/comparisons`.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like 30s, 6h or 2days: {e}"))
}

/// Reads a secret from `path` (the config's `field`): the file's content without the
/// trailing newline. Refused when every user of the machine can read the file: give it to
/// the service's user (`chmod 600`) or to root and the service's group (`chmod 640`).
pub fn read_secret_file(path: &Path, field: &str) -> Result<String, crate::error::UserError> {
    use std::os::unix::fs::MetadataExt;
    let err = |m: String| crate::error::UserError::new(m);
    let meta = std::fs::metadata(path)
        .map_err(|e| err(format!("cannot read {} ({field}): {e}", path.display())))?;
    if meta.mode() & 0o004 != 0 {
        return Err(err(format!(
            "{} ({field}) is readable by every user of this machine (mode {:o}); make it readable by the service's user only: `chmod 600` it, or `chown root:verdicts` and `chmod 640`",
            path.display(),
            meta.mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(format!(
            "cannot read {} ({field}): {e}. It must be readable by the user running verdicts (it belongs to {}, mode {:o})",
            path.display(),
            crate::store::health::user_name(meta.uid()),
            meta.mode() & 0o777
        ))
    })?;
    let value = text.trim_end_matches(['\n', '\r']).to_owned();
    if value.is_empty() {
        return Err(err(format!("{} ({field}) is empty", path.display())));
    }
    Ok(value)
}

impl ConfigError {
    /// The field and reason of an `Invalid` error (others keep their text).
    fn into_field(self) -> (&'static str, String) {
        match self {
            ConfigError::Invalid { field, reason, .. } => (field, reason),
            other => ("smtp", other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_fold_parent_components() {
        assert_eq!(
            normalize(Path::new("config/../content")),
            PathBuf::from("content")
        );
        assert_eq!(
            normalize(Path::new("/srv/v/config/../state")),
            PathBuf::from("/srv/v/state")
        );
        assert_eq!(normalize(Path::new("../x")), PathBuf::from("../x"));
        assert_eq!(normalize(Path::new("a/./b")), PathBuf::from("a/b"));
        assert_eq!(normalize(Path::new("config/..")), PathBuf::from("."));
    }
}
