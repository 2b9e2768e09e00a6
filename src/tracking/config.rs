//! The `tracking:` section: whether and how the digest's links are counted, the open pixel,
//! the community vote's minimum, how machines are told from readers, and the operator's
//! report endpoint.

use std::time::Duration;

use serde::Deserialize;

/// How clicks on the digest's links are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClickMode {
    /// Counted per issue and link; no reader is named (the default).
    #[default]
    Aggregate,
    /// Counted per reader as well: needs the readers' consent.
    PerReader,
    /// Links go straight to the site and nothing is counted.
    Off,
}

impl ClickMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ClickMode::Aggregate => "aggregate",
            ClickMode::PerReader => "per-reader",
            ClickMode::Off => "off",
        }
    }
}

/// An on/off switch spelled as in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    On,
    #[default]
    Off,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracking {
    #[serde(default)]
    clicks: ClickMode,
    #[serde(default)]
    opens: Switch,
    #[serde(default = "default_min_votes")]
    min_votes: u32,
    #[serde(default = "default_machine_delay")]
    machine_delay: String,
    #[serde(default = "default_scanner_agents")]
    scanner_agents: Vec<String>,
    #[serde(default = "default_scanner_networks")]
    scanner_networks: Vec<String>,
    #[serde(default)]
    report_token_env: Option<String>,
}

impl Default for RawTracking {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("every tracking field has a default")
    }
}

fn default_min_votes() -> u32 {
    5
}

fn default_machine_delay() -> String {
    "60s".into()
}

/// Substrings (compared without case) of the user agents that link scanners and
/// prefetchers send.
fn default_scanner_agents() -> Vec<String> {
    [
        "safelinks",
        "proofpoint",
        "barracuda",
        "mimecast",
        "urldefense",
        "bingpreview",
        "googleimageproxy",
        "yahoomailproxy",
        "slackbot",
        "facebookexternalhit",
        "python-requests",
        "curl/",
        "wget/",
        "go-http-client",
        "headlesschrome",
        "bot",
        "crawler",
        "spider",
        "scanner",
    ]
    .map(String::from)
    .to_vec()
}

/// Networks of the best-known mail security gateways (Microsoft's Exchange Online
/// Protection ranges and Proofpoint's published ones).
fn default_scanner_networks() -> Vec<String> {
    [
        "40.92.0.0/15",
        "40.107.0.0/16",
        "52.100.0.0/14",
        "104.47.0.0/17",
        "148.163.128.0/19",
        "67.231.144.0/20",
        "205.220.160.0/19",
    ]
    .map(String::from)
    .to_vec()
}

/// The validated `tracking:` section.
#[derive(Debug, Clone)]
pub struct TrackingConfig {
    pub clicks: ClickMode,
    /// Adds the open pixel (`tracking.opens: on`); its counts are labelled as likely
    /// machine opens.
    pub opens: bool,
    /// Live votes a tool needs before its Community figure is shown.
    pub min_votes: u32,
    /// A click this soon after the copy was delivered is a scanner's.
    pub machine_delay: Duration,
    /// Lower-cased user-agent substrings of known scanners.
    pub scanner_agents: Vec<String>,
    pub scanner_networks: Vec<ipnet::IpNet>,
    /// The environment variable holding the operator's token for `/report/`; without it
    /// the report is not served.
    pub report_token_env: Option<String>,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        TrackingConfig::from_raw(RawTracking::default()).expect("the defaults are valid")
    }
}

impl TrackingConfig {
    /// Checks the raw section; an error names the field and the reason.
    pub fn from_raw(raw: RawTracking) -> Result<TrackingConfig, (&'static str, String)> {
        let machine_delay = humantime::parse_duration(raw.machine_delay.trim()).map_err(|e| {
            (
                "tracking.machine_delay",
                format!("`{}` is not a duration such as 60s: {e}", raw.machine_delay),
            )
        })?;
        if raw.min_votes == 0 {
            return Err((
                "tracking.min_votes",
                "must be at least 1 (a figure from no votes says nothing)".into(),
            ));
        }
        let mut networks = Vec::new();
        for n in &raw.scanner_networks {
            let net = n
                .parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    (
                        "tracking.scanner_networks",
                        format!("`{n}` is not an address or a network such as 10.0.0.0/8"),
                    )
                })?;
            networks.push(net);
        }
        let mut agents = Vec::new();
        for a in &raw.scanner_agents {
            let a = a.trim().to_ascii_lowercase();
            if a.is_empty() {
                return Err((
                    "tracking.scanner_agents",
                    "an empty entry would match every browser".into(),
                ));
            }
            agents.push(a);
        }
        if let Some(env) = &raw.report_token_env {
            if env.trim().is_empty() {
                return Err((
                    "tracking.report_token_env",
                    "must name an environment variable".into(),
                ));
            }
        }
        Ok(TrackingConfig {
            clicks: raw.clicks,
            opens: raw.opens == Switch::On,
            min_votes: raw.min_votes,
            machine_delay,
            scanner_agents: agents,
            scanner_networks: networks,
            report_token_env: raw.report_token_env,
        })
    }

    /// The report's token from the environment, when the report is published.
    pub fn report_token(&self) -> Option<String> {
        let var = self.report_token_env.as_ref()?;
        std::env::var(var).ok().filter(|t| t.len() >= 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<TrackingConfig, (&'static str, String)> {
        TrackingConfig::from_raw(serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn defaults_are_private_and_filter_machines() {
        let c = parse("{}").unwrap();
        assert_eq!(c.clicks, ClickMode::Aggregate);
        assert!(!c.opens);
        assert_eq!(c.min_votes, 5);
        assert!(c.scanner_agents.iter().any(|a| a == "safelinks"));
        assert!(c.report_token_env.is_none());
    }

    #[test]
    fn bad_values_name_the_field() {
        assert_eq!(
            parse("machine_delay: soon").unwrap_err().0,
            "tracking.machine_delay"
        );
        assert_eq!(parse("min_votes: 0").unwrap_err().0, "tracking.min_votes");
        assert_eq!(
            parse("scanner_networks: [10.0.0.0/33]").unwrap_err().0,
            "tracking.scanner_networks"
        );
        assert!(serde_yaml::from_str::<RawTracking>("clicks: always").is_err());
        assert_eq!(
            parse("clicks: per-reader").unwrap().clicks,
            ClickMode::PerReader
        );
    }
}
