//! Checking each raw section of the file into its typed form, naming the field on error.

use super::*;

impl Check<'_> {
    pub(super) fn invalid(&self, field: &'static str, reason: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            field,
            reason,
        }
    }

    /// A path from the file, relative to the file's folder.
    pub(super) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            normalize(&self.path.parent().unwrap_or(Path::new(".")).join(p))
        }
    }

    pub(super) fn newsletter(&self, raw: RawNewsletter) -> Result<Newsletter, ConfigError> {
        let from: lettre::message::Mailbox = raw.from.parse().map_err(|e| {
            self.invalid(
                "newsletter.from",
                format!("`{}` is not a mailbox: {e}", raw.from),
            )
        })?;
        SubscriberEmail::parse(from.email.as_ref())
            .map_err(|e| self.invalid("newsletter.from", e.to_string()))?;
        let base_url = raw.base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("https://") || base_url.starts_with("http://"))
            || base_url.len() <= "https://".len()
        {
            return Err(self.invalid(
                "newsletter.base_url",
                format!("`{base_url}` must be an absolute http(s) URL"),
            ));
        }
        if raw.name.trim().is_empty() {
            return Err(self.invalid("newsletter.name", "must not be empty".into()));
        }
        if raw.postal_address.trim().is_empty() {
            return Err(self.invalid(
                "newsletter.postal_address",
                "must not be empty (bulk mail must carry a postal address)".into(),
            ));
        }
        let list_id = match raw.list_id {
            Some(id) => id,
            None => format!("weekly.{}", from.email.domain()),
        };
        Ok(Newsletter {
            name: raw.name,
            from,
            base_url,
            postal_address: raw.postal_address,
            list_id,
        })
    }

    pub(super) fn schedule(&self, raw: RawSchedule) -> Result<ScheduleConfig, ConfigError> {
        let tz = Tz::from_str(&raw.timezone).map_err(|_| {
            self.invalid(
                "schedule.timezone",
                format!(
                    "`{}` is not an IANA time zone (e.g. Europe/London)",
                    raw.timezone
                ),
            )
        })?;
        let slots = SlotSchedule::new(&raw.cron, tz)
            .map_err(|e| self.invalid("schedule.cron", e.to_string()))?;
        let catch_up =
            parse_duration(&raw.catch_up).map_err(|e| self.invalid("schedule.catch_up", e))?;
        Ok(ScheduleConfig {
            slots,
            catch_up,
            on_empty: raw.on_empty,
        })
    }

    pub(super) fn smtp(&self, raw: RawSmtp, role: RelayRole) -> Result<SmtpConfig, ConfigError> {
        if raw.concurrency == 0 || raw.concurrency > 1000 {
            return Err(self.invalid(
                "smtp.concurrency",
                format!("{} is out of range 1..=1000", raw.concurrency),
            ));
        }
        if raw.max_attempts == 0 {
            return Err(self.invalid("smtp.max_attempts", "must be at least 1".into()));
        }
        if raw.host.trim().is_empty() {
            return Err(self.invalid("smtp.host", "must not be empty".into()));
        }
        let pause_max =
            parse_duration(&raw.pause_max).map_err(|e| self.invalid("smtp.pause_max", e))?;
        if pause_max.is_zero() {
            return Err(self.invalid("smtp.pause_max", "must be longer than 0s".into()));
        }
        let name = raw
            .name
            .clone()
            .unwrap_or_else(|| format!("{}:{}", raw.host, raw.port));
        let extra_roots = match &raw.ca_file {
            None => vec![],
            Some(file) => {
                relays::read_ca(&self.resolve(file)).map_err(|e| self.invalid("smtp.ca_file", e))?
            }
        };
        if let Some(w) = raw.warmup {
            if w.first_day == 0 || !(1.0..=10.0).contains(&w.factor) {
                return Err(self.invalid(
                    "smtp.warmup",
                    format!(
                        "relay {name}: first_day must be at least 1 and factor between 1 and 10"
                    ),
                ));
            }
        }
        for (field, limit) in [
            ("smtp.per_second", raw.per_second),
            ("smtp.per_hour", raw.per_hour),
            ("smtp.per_day", raw.per_day),
        ] {
            if limit == Some(0) {
                return Err(self.invalid(
                    field,
                    format!("relay {name}: must be at least 1 (leave it out for no limit)"),
                ));
            }
        }
        Ok(SmtpConfig {
            limits: RelayLimits {
                per_second: raw.per_second,
                per_hour: raw.per_hour,
                per_day: raw.per_day,
                warmup: raw.warmup,
            },
            password_file: raw.password_file.as_deref().map(|p| self.resolve(p)),
            extra_roots,
            role,
            name,
            timeout: parse_duration(&raw.timeout).map_err(|e| self.invalid("smtp.timeout", e))?,
            retry_base: parse_duration(&raw.retry_base)
                .map_err(|e| self.invalid("smtp.retry_base", e))?,
            give_up_after: parse_duration(&raw.give_up_after)
                .map_err(|e| self.invalid("smtp.give_up_after", e))?,
            pause_max,
            host: raw.host,
            port: raw.port,
            tls: raw.tls,
            username: raw.username,
            password_env: raw.password_env,
            concurrency: raw.concurrency,
            rate_per_second: raw.rate_per_second,
            max_attempts: raw.max_attempts,
        })
    }

    pub(super) fn web(&self, raw: &RawWeb) -> Result<WebConfig, ConfigError> {
        let header_timeout = parse_duration(&raw.header_timeout)
            .map_err(|e| self.invalid("web.header_timeout", e))?;
        let idle_timeout =
            parse_duration(&raw.idle_timeout).map_err(|e| self.invalid("web.idle_timeout", e))?;
        let body_timeout =
            parse_duration(&raw.body_timeout).map_err(|e| self.invalid("web.body_timeout", e))?;
        for (field, d) in [
            ("web.header_timeout", header_timeout),
            ("web.idle_timeout", idle_timeout),
            ("web.body_timeout", body_timeout),
        ] {
            if d.is_zero() {
                return Err(self.invalid(field, "must be longer than 0s".into()));
            }
        }
        if raw.max_connections == 0 || raw.max_connections > 100_000 {
            return Err(self.invalid(
                "web.max_connections",
                format!("{} is out of range 1..=100000", raw.max_connections),
            ));
        }
        if raw.max_body_bytes == 0 {
            return Err(self.invalid("web.max_body_bytes", "must be at least 1".into()));
        }
        Ok(WebConfig {
            header_timeout,
            idle_timeout,
            max_connections: raw.max_connections,
            max_body_bytes: raw.max_body_bytes,
            body_timeout,
            min_body_rate: raw.min_body_rate,
        })
    }

    pub(super) fn web_listen(&self, listen: &str) -> Result<std::net::SocketAddr, ConfigError> {
        listen
            .parse()
            .map_err(|_| self.invalid("web.listen", format!("`{listen}` is not an address:port")))
    }
}
