//! The Community figure of a tool: the subscribers' live vote as `ship % (N votes)` once it
//! has `tracking.min_votes` votes; until then the content file's figure from elsewhere, if
//! it states one, else "—".

use rusqlite::Connection;

use crate::config::Config;
use crate::content::{Comparison, Tool};
use crate::digest::render::votes_label;

/// The figure shown beside "Community".
pub fn label(tool: &Tool) -> String {
    match tool.live_votes {
        Some((ship, total)) if total > 0 => {
            let pct = (ship * 100 + total / 2) / total;
            format!(
                "{pct}% ship ({} vote{})",
                votes_label(Some(total)),
                if total == 1 { "" } else { "s" }
            )
        }
        _ => votes_label(tool.community_votes),
    }
}

/// Fills in each tool's live vote where it has passed the configured minimum.
pub fn apply(
    conn: &Connection,
    config: &Config,
    comparisons: &mut [Comparison],
) -> rusqlite::Result<()> {
    let tallies = crate::store::tracking::tallies(conn)?;
    for c in comparisons.iter_mut() {
        for (i, t) in c.tools.iter_mut().enumerate() {
            t.live_votes = tallies
                .get(&(c.slug.clone(), i as u8))
                .filter(|t| t.total >= config.tracking.min_votes)
                .map(|t| (t.ship, t.total));
        }
    }
    Ok(())
}

/// The same for borrowed comparisons (the issue being planned): owned copies with votes.
pub fn with_votes(
    conn: &Connection,
    config: &Config,
    comparisons: &[&Comparison],
) -> rusqlite::Result<Vec<Comparison>> {
    let mut owned: Vec<Comparison> = comparisons.iter().map(|c| (*c).clone()).collect();
    apply(conn, config, &mut owned)?;
    Ok(owned)
}
