//! Which log lines reach stderr. `RUST_LOG` is read as usual, with one difference: a bare
//! level (`RUST_LOG=debug`) applies to verdicts itself, while the crates it uses stay at
//! `warn` unless named (`RUST_LOG=debug,hyper=debug`). An HTML parser at debug level logs
//! every token of every digest, hundreds of kilobytes per line, gigabytes per preview.

use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// The target of every log line this crate writes (`verdicts::delivery`, …).
const OWN_TARGET: &str = "verdicts";

/// What dependencies log when `RUST_LOG` does not name them.
const DEPENDENCIES: LevelFilter = LevelFilter::WARN;

/// The filter for a `RUST_LOG` value (`None`: unset). A value that does not parse falls
/// back to the default, with the reason returned for a warning once logging is up.
pub fn filter(rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    let default = || EnvFilter::new(format!("{DEPENDENCIES},{OWN_TARGET}=info"));
    let Some(spec) = rust_log.map(str::trim).filter(|s| !s.is_empty()) else {
        return (default(), None);
    };
    let mut directives = vec![DEPENDENCIES.to_string()];
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match directive.parse::<LevelFilter>() {
            Ok(level) => directives.push(format!("{OWN_TARGET}={level}")),
            Err(_) => directives.push(directive.to_owned()),
        }
    }
    match EnvFilter::try_new(directives.join(",")) {
        Ok(filter) => (filter, None),
        Err(e) => (
            default(),
            Some(format!(
                "RUST_LOG `{spec}` is not a log filter ({e}); using the default"
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(rust_log: Option<&str>) -> String {
        filter(rust_log).0.to_string()
    }

    #[test]
    fn a_bare_level_is_for_verdicts_and_dependencies_stay_at_warn() {
        let f = shown(Some("debug"));
        assert!(f.contains("verdicts=debug"), "{f}");
        assert!(f.contains("warn"), "{f}");
        assert!(!f.split(',').any(|d| d == "debug"), "{f}");
    }

    #[test]
    fn a_named_dependency_gets_its_level() {
        let f = shown(Some("debug,html5ever=trace"));
        assert!(f.contains("html5ever=trace"), "{f}");
        assert!(f.contains("verdicts=debug"), "{f}");
    }

    #[test]
    fn unset_or_invalid_is_the_default() {
        assert!(shown(None).contains("verdicts=info"));
        let (f, warning) = filter(Some("verdicts=loud"));
        assert!(f.to_string().contains("verdicts=info"));
        assert!(warning.unwrap().contains("verdicts=loud"));
    }
}
