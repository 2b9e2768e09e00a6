//! The SMTP password and the signing key: read once, checked against the database's fingerprint.

use super::*;

pub(crate) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The SMTP password, when a username is configured. Refuses to send credentials in the
/// clear to anything but this machine.
pub fn smtp_password(config: &Config) -> anyhow::Result<Option<String>> {
    let smtp = &config.smtp;
    let Some(user) = &smtp.username else {
        return Ok(None);
    };
    if smtp.tls == TlsMode::None && !is_loopback(&smtp.host) {
        return Err(UserError::new(format!(
            "refusing to log in to {} as {user} without TLS: the password would cross the network in clear text. Set smtp.tls to starttls or tls",
            smtp.host
        ))
        .into());
    }
    if let Some(path) = &config.smtp_password_file {
        return Ok(Some(crate::config::read_secret_file(
            path,
            "smtp.password_file",
        )?));
    }
    match std::env::var(&smtp.password_env) {
        Ok(p) if !p.is_empty() => Ok(Some(p)),
        _ => Err(UserError::new(format!(
            "smtp.username is set but the environment variable {} (smtp.password_env) holding the password is not",
            smtp.password_env
        ))
        .into()),
    }
}

/// The key that signs unsubscribe links; sending without one is refused. With a state
/// database, the key must be the one it was used with before (see [`check_secret`]).
pub fn token_key(config: &Config) -> anyhow::Result<TokenKey> {
    let key = configured_key(config)?;
    let path = config.database_path();
    if path.exists() {
        check_secret(config, &crate::store::open(&path)?, &key, false)?;
    }
    Ok(key)
}

/// Records `key` as the database's secret (after the checks of [`check_secret`]): called
/// when links signed with it are about to go out.
pub fn record_secret(
    config: &Config,
    conn: &rusqlite::Connection,
    key: &TokenKey,
) -> anyhow::Result<()> {
    check_secret(config, conn, key, true)
}

/// The secret from `secret_env`, with the previous ones from `previous_secret_envs`.
pub fn configured_key(config: &Config) -> anyhow::Result<TokenKey> {
    let key = match &config.secret_file {
        Some(path) => {
            let value = crate::config::read_secret_file(path, "secret_file")?;
            TokenKey::from_secret(value, &path.display().to_string())
        }
        None => TokenKey::from_env(&config.secret_env),
    }
    .map_err(|e| UserError::new(e.to_string()))?;
    let mut previous = Vec::new();
    for var in &config.previous_secret_envs {
        previous.push(TokenKey::from_env(var).map_err(|e| {
            UserError::new(format!(
                "{e} (it is listed in previous_secret_envs of {}; remove it from there once the rotation is over)",
                config.path.display()
            ))
        })?);
    }
    Ok(key.with_previous(previous))
}

/// Refuses a secret other than the one the database's links were signed with: every link
/// already mailed would stop working, with nothing logged. A listed previous secret makes
/// it a rotation. With `record`, the secret becomes the database's (the first one, or the
/// new one of a rotation); without, nothing is written.
pub fn check_secret(
    config: &Config,
    conn: &rusqlite::Connection,
    key: &TokenKey,
    record: bool,
) -> anyhow::Result<()> {
    use crate::store::secret::{self, SecretCheck};
    let current = key.fingerprint();
    match secret::check(conn, &current, &key.previous_fingerprints(), record)? {
        SecretCheck::Rotated if record => {
            tracing::warn!(
                "{} is a new secret; links signed with the previous one still work while previous_secret_envs lists it",
                config.secret_env
            );
            Ok(())
        }
        SecretCheck::Recorded | SecretCheck::Same | SecretCheck::Rotated => Ok(()),
        SecretCheck::Different { stored } => Err(UserError::new(format!(
            "{var} is not the secret this newsletter's links were signed with: the state database {db} knows the secret with fingerprint {stored}, and {var} has fingerprint {current}. \
             With it, every unsubscribe and confirmation link already mailed would be refused. \
             Set {var} back to its earlier value (the service reads it from secret_file or its environment file); to change the secret on purpose, keep the old value in another variable and list that under previous_secret_envs in {config_path} for as long as old links should work (docs/configuration.md)",
            var = config.secret_env,
            db = config.database_path().display(),
            config_path = config.path.display(),
        ))
        .into()),
    }
}
