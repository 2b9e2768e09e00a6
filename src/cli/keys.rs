//! `verdicts keys`: the JSON API's keys. A new key is printed once and only its hash kept.

use clap::Subcommand;

use crate::api::keys::{self, Scope};
use crate::config::Config;
use crate::error::user_error;
use crate::store::{self, api as store_api};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key for another system; it is printed once, and only its hash is stored
    Create {
        /// A name for the key (letters, digits, `.`, `_`, `-`), e.g. the system using it
        name: String,
        /// What it may do, comma-separated: subscribers:read, subscribers:write,
        /// issues:read, events:read
        #[arg(long, value_name = "SCOPES", value_parser = scope_list)]
        scope: ScopeList,
    },
    /// Every key: name, scopes, when it was made and last used, and whether it is revoked
    List,
    /// Refuse a key from now on (its name stays listed)
    Revoke {
        /// The key's name
        name: String,
    },
}

/// The scopes of `--scope`, read as one comma-separated value.
#[derive(Debug, Clone)]
pub struct ScopeList(Vec<Scope>);

fn scope_list(s: &str) -> Result<ScopeList, String> {
    keys::parse_scopes(s).map(ScopeList)
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn run(config: &Config, cmd: KeysCommand) -> anyhow::Result<()> {
    let path = config.database_path();
    match cmd {
        KeysCommand::Create { name, scope } => {
            if !valid_name(&name) {
                return user_error(format!(
                    "key name `{}`: use 1 to 64 letters, digits, `.`, `_` or `-`",
                    name.escape_debug()
                ));
            }
            let (conn, opened) = store::create(&path)?;
            if opened == store::Opened::Created {
                eprintln!("Created a new state database at {}.", path.display());
            }
            let mut scopes: Vec<Scope> = scope.0;
            scopes.sort();
            scopes.dedup();
            let names: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
            let new = keys::generate();
            if !store_api::insert_key(&conn, &name, &new.prefix, &new.hash, &names)? {
                return user_error(format!(
                    "key name `{name}`: a key of that name exists (`verdicts keys list`); choose another name"
                ));
            }
            println!("Created API key `{name}` with {}.", names.join(", "));
            println!("{}", new.key);
            println!(
                "This is the only time the key is shown: store it with the system that uses it."
            );
            Ok(())
        }
        KeysCommand::List => {
            let conn = store::open(&path)?;
            let keys = store_api::keys(&conn)?;
            if keys.is_empty() {
                println!("No API keys. `verdicts keys create NAME --scope ...` makes one.");
                return Ok(());
            }
            let width = keys.iter().map(|k| k.name.len()).max().unwrap_or(4).max(4);
            println!(
                "{:width$}  {:20}  {:20}  {:8}  SCOPES",
                "NAME", "CREATED", "LAST USED", "STATE"
            );
            for k in keys {
                println!(
                    "{:width$}  {:20}  {:20}  {:8}  {}",
                    k.name,
                    store::timestamp(k.created_at),
                    k.last_used_at
                        .map(store::timestamp)
                        .unwrap_or_else(|| "never".into()),
                    if k.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    },
                    k.scopes.join(",")
                );
            }
            Ok(())
        }
        KeysCommand::Revoke { name } => {
            let conn = store::open(&path)?;
            if store_api::revoke_key(&conn, &name)? {
                println!("Revoked API key `{name}`: requests with it are refused from now on.");
                Ok(())
            } else {
                user_error(format!(
                    "key name `{name}`: there is no active key of that name (`verdicts keys list`)"
                ))
            }
        }
    }
}
