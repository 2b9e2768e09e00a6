//! Community votes and click counts (migration 14). Only the tracking writer
//! (`tracking::recorder`) writes here; the commands, the site and the report read.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::store::{self, IssueNumber, SubscriberId};

/// A reader's choice on a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    Ship,
    Skip,
}

impl Choice {
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::Ship => "ship",
            Choice::Skip => "skip",
        }
    }

    pub fn parse(s: &str) -> Option<Choice> {
        match s {
            "ship" => Some(Choice::Ship),
            "skip" => Some(Choice::Skip),
            _ => None,
        }
    }
}

/// One vote to record.
#[derive(Debug, Clone)]
pub struct NewVote {
    pub subscriber: SubscriberId,
    pub issue: IssueNumber,
    pub slug: String,
    pub tool: u8,
    pub choice: Choice,
    pub at: DateTime<Utc>,
}

/// What recording a vote did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteOutcome {
    /// The reader's first vote on the tool.
    Cast,
    /// The reader had voted the other way; the vote now says this.
    Changed,
    /// The same vote again: nothing changed.
    Unchanged,
    /// The comparison was not in the issue the reader's link came from.
    NotInIssue,
    /// The reader is no longer on the list (erased).
    UnknownReader,
    /// The reader has unsubscribed or bounced: their earlier votes count, new ones do not.
    NotSubscribed,
}

/// Records a vote (one per reader per tool; a later one replaces it).
pub fn record_vote(conn: &Connection, v: &NewVote) -> rusqlite::Result<VoteOutcome> {
    let in_issue: bool = conn
        .prepare_cached("SELECT 1 FROM issue_comparisons WHERE issue = ? AND slug = ?")?
        .exists(params![v.issue, v.slug])?;
    if !in_issue {
        return Ok(VoteOutcome::NotInIssue);
    }
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM subscribers WHERE id = ?")?
        .query_row([v.subscriber], |r| r.get(0))
        .optional()?;
    match status.as_deref() {
        None => return Ok(VoteOutcome::UnknownReader),
        Some("active") => {}
        Some(_) => return Ok(VoteOutcome::NotSubscribed),
    }
    let before: Option<String> = conn
        .prepare_cached(
            "SELECT choice FROM votes WHERE subscriber_id = ? AND slug = ? AND tool = ?",
        )?
        .query_row(params![v.subscriber, v.slug, v.tool], |r| r.get(0))
        .optional()?;
    let at = store::timestamp(v.at);
    match before.as_deref() {
        Some(c) if c == v.choice.as_str() => Ok(VoteOutcome::Unchanged),
        Some(_) => {
            conn.prepare_cached(
                "UPDATE votes SET choice = ?, changed_at = ?, issue = ?
                 WHERE subscriber_id = ? AND slug = ? AND tool = ?",
            )?
            .execute(params![
                v.choice.as_str(),
                at,
                v.issue,
                v.subscriber,
                v.slug,
                v.tool
            ])?;
            Ok(VoteOutcome::Changed)
        }
        None => {
            conn.prepare_cached(
                "INSERT INTO votes (subscriber_id, slug, tool, choice, issue, cast_at)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )?
            .execute(params![
                v.subscriber,
                v.slug,
                v.tool,
                v.choice.as_str(),
                v.issue,
                at
            ])?;
            Ok(VoteOutcome::Cast)
        }
    }
}

/// The reader's current vote on a tool, if any.
pub fn vote_of(
    conn: &Connection,
    subscriber: SubscriberId,
    slug: &str,
    tool: u8,
) -> rusqlite::Result<Option<Choice>> {
    let c: Option<String> = conn
        .prepare_cached(
            "SELECT choice FROM votes WHERE subscriber_id = ? AND slug = ? AND tool = ?",
        )?
        .query_row(params![subscriber, slug, tool], |r| r.get(0))
        .optional()?;
    Ok(c.as_deref().and_then(Choice::parse))
}

/// A reader's vote, as `subscribers show` and the export list them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReaderVote {
    pub comparison: String,
    /// 0 for the comparison's first tool, 1 for its second.
    pub tool: u8,
    pub choice: Choice,
    pub issue: i64,
    pub cast_at: String,
    pub changed_at: Option<String>,
}

/// Every vote of a reader, by comparison and tool.
pub fn reader_votes(
    conn: &Connection,
    subscriber_id: SubscriberId,
) -> rusqlite::Result<Vec<ReaderVote>> {
    let mut stmt = conn.prepare_cached(
        "SELECT slug, tool, choice, issue, cast_at, changed_at FROM votes
         WHERE subscriber_id = ? ORDER BY slug, tool",
    )?;
    let rows = stmt.query_map([subscriber_id], |r| {
        let choice: String = r.get(2)?;
        Ok(ReaderVote {
            comparison: r.get(0)?,
            tool: r.get(1)?,
            choice: Choice::parse(&choice).unwrap_or(Choice::Skip),
            issue: r.get(3)?,
            cast_at: r.get(4)?,
            changed_at: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// The live votes on one tool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub ship: u32,
    pub total: u32,
}

impl Tally {
    /// The share of ship votes, rounded to a whole percent.
    pub fn ship_percent(&self) -> u32 {
        (self.ship * 100 + self.total / 2)
            .checked_div(self.total)
            .unwrap_or(0)
    }
}

/// Every tool's live votes, keyed by (comparison slug, tool index).
pub fn tallies(conn: &Connection) -> rusqlite::Result<HashMap<(String, u8), Tally>> {
    let mut stmt = conn.prepare_cached(
        "SELECT slug, tool, SUM(choice = 'ship'), COUNT(*) FROM votes GROUP BY slug, tool",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            (r.get::<_, String>(0)?, r.get::<_, u8>(1)?),
            Tally {
                ship: r.get(2)?,
                total: r.get(3)?,
            },
        ))
    })?;
    rows.collect()
}

/// Why a click was judged a machine's (`None`: a person's).
pub type MachineReason = Option<&'static str>;

/// One followed link, to record.
#[derive(Debug, Clone)]
pub struct NewClick {
    pub issue: IssueNumber,
    pub position: u32,
    pub target: String,
    pub slug: Option<String>,
    pub visitor: String,
    pub subscriber: Option<SubscriberId>,
    pub at: DateTime<Utc>,
    pub machine: MachineReason,
}

/// When the issue's latest copy was delivered (to `subscriber`, when given), if the ledger
/// still has it (retention folds deliveries away).
pub fn delivered_at(
    conn: &Connection,
    issue: IssueNumber,
    subscriber: Option<SubscriberId>,
) -> rusqlite::Result<Option<DateTime<Utc>>> {
    // `sent_at` is seconds since the epoch (migration 10).
    let at: Option<i64> = match subscriber {
        Some(id) => conn
            .prepare_cached("SELECT sent_at FROM deliveries WHERE issue = ? AND subscriber_id = ?")?
            .query_row(params![issue, id], |r| r.get(0))
            .optional()?
            .flatten(),
        None => conn
            .prepare_cached("SELECT MAX(sent_at) FROM deliveries WHERE issue = ?")?
            .query_row([issue], |r| r.get(0))?,
    };
    Ok(at.and_then(|s| DateTime::<Utc>::from_timestamp(s, 0)))
}

/// Records a batch of clicks; a click of a reader erased meanwhile is dropped with them.
/// Returns how many rows were written.
pub fn record_clicks(conn: &Connection, clicks: &[NewClick]) -> rusqlite::Result<usize> {
    let mut n = 0;
    let mut stmt = conn.prepare_cached(
        "INSERT INTO clicks (issue, position, target, slug, visitor, subscriber_id, at, machine)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8
         WHERE ?6 IS NULL OR EXISTS (SELECT 1 FROM subscribers WHERE id = ?6)",
    )?;
    for c in clicks {
        n += stmt.execute(params![
            c.issue,
            c.position,
            c.target,
            c.slug,
            c.visitor,
            c.subscriber,
            store::timestamp(c.at),
            c.machine
        ])?;
    }
    Ok(n)
}

/// The tracking figures of one issue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IssueFigures {
    /// Distinct people (readers in per-reader mode, else browsers) with a human click.
    pub human_clickers: u64,
    pub human_clicks: u64,
    /// Clicks judged to be machines' (scanners, prefetch, decoy followers, early clicks).
    pub machine_clicks: u64,
    /// Human clickers per comparison, most first.
    pub per_comparison: Vec<(String, u64)>,
    /// Votes recorded from this issue's links.
    pub votes: u64,
    /// Pixel loads (`tracking.opens: on`): machine opens likely.
    pub opens: u64,
}

/// The human clicks of an issue: not judged a machine's, from a visitor (or reader) that
/// never followed the decoy link.
const HUMAN: &str = "machine IS NULL AND position > 0
     AND COALESCE(CAST(subscriber_id AS TEXT), visitor) NOT IN
       (SELECT COALESCE(CAST(subscriber_id AS TEXT), visitor) FROM clicks
        WHERE issue = ?1 AND machine = 'decoy')";

pub fn issue_figures(conn: &Connection, issue: IssueNumber) -> rusqlite::Result<IssueFigures> {
    let (clickers, clicks): (u64, u64) = conn
        .prepare_cached(&format!(
            "SELECT COUNT(DISTINCT COALESCE(CAST(subscriber_id AS TEXT), visitor)), COUNT(*)
             FROM clicks WHERE issue = ?1 AND {HUMAN}"
        ))?
        .query_row([issue], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let all: u64 = conn
        .prepare_cached("SELECT COUNT(*) FROM clicks WHERE issue = ? AND position > 0")?
        .query_row([issue], |r| r.get(0))?;
    let opens: u64 = conn
        .prepare_cached("SELECT COUNT(*) FROM clicks WHERE issue = ? AND machine = 'open'")?
        .query_row([issue], |r| r.get(0))?;
    let decoys: u64 = conn
        .prepare_cached("SELECT COUNT(*) FROM clicks WHERE issue = ? AND machine = 'decoy'")?
        .query_row([issue], |r| r.get(0))?;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT slug, COUNT(DISTINCT COALESCE(CAST(subscriber_id AS TEXT), visitor)) AS n
         FROM clicks WHERE issue = ?1 AND slug IS NOT NULL AND {HUMAN}
         GROUP BY slug ORDER BY n DESC, slug"
    ))?;
    let per_comparison = stmt
        .query_map([issue], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, u64)>>>()?;
    let votes: u64 = conn
        .prepare_cached("SELECT COUNT(*) FROM votes WHERE issue = ?")?
        .query_row([issue], |r| r.get(0))?;
    Ok(IssueFigures {
        human_clickers: clickers,
        human_clicks: clicks,
        machine_clicks: all - clicks + decoys,
        per_comparison,
        votes,
        opens,
    })
}

/// Every issue's unique human clickers, for the click-through rate in `issues`.
pub fn clickers_by_issue(conn: &Connection) -> rusqlite::Result<HashMap<IssueNumber, u64>> {
    let mut stmt = conn.prepare_cached("SELECT DISTINCT issue FROM clicks")?;
    let issues = stmt
        .query_map([], |r| r.get::<_, IssueNumber>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut out = HashMap::new();
    for issue in issues {
        out.insert(issue, issue_figures(conn, issue)?.human_clickers);
    }
    Ok(out)
}

/// One week of the list's movement (weeks start on Monday, UTC).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ListWeek {
    /// The week's Monday, `YYYY-MM-DD`.
    pub week: String,
    pub signups: u64,
    pub unsubscribes: u64,
    pub bounces: u64,
    pub complaints: u64,
    /// Active subscribers at the end of the week (worked back from today's count).
    pub active: u64,
}

/// The list's movement per week, oldest first, over the weeks that saw any.
pub fn list_weeks(conn: &Connection) -> rusqlite::Result<Vec<ListWeek>> {
    let mut weeks: std::collections::BTreeMap<String, ListWeek> = Default::default();
    let monday = "date(substr(%s, 1, 10), '-6 days', 'weekday 1')";
    let mut stmt = conn.prepare(&format!(
        "SELECT {}, COUNT(*) FROM subscribers WHERE status != 'pending' GROUP BY 1",
        monday.replace("%s", "created_at")
    ))?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))? {
        let (w, n) = row?;
        weeks.entry(w.clone()).or_default().signups += n;
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT {}, kind, COUNT(DISTINCT subscriber_id) FROM events GROUP BY 1, 2",
        monday.replace("%s", "at")
    ))?;
    for row in stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, u64>(2)?,
        ))
    })? {
        let (w, kind, n) = row?;
        let e = weeks.entry(w).or_default();
        match kind.as_str() {
            "unsubscribe" => e.unsubscribes += n,
            "complaint" => e.complaints += n,
            _ => e.bounces += n,
        }
    }
    let active_now: u64 = conn.query_row(
        "SELECT COUNT(*) FROM subscribers WHERE status = 'active'",
        [],
        |r| r.get(0),
    )?;
    let mut out: Vec<ListWeek> = weeks
        .into_iter()
        .map(|(week, mut w)| {
            w.week = week;
            w
        })
        .collect();
    let mut active = active_now as i64;
    for w in out.iter_mut().rev() {
        w.active = active.max(0) as u64;
        active -= w.signups as i64 - (w.unsubscribes + w.bounces) as i64;
    }
    Ok(out)
}

/// Each tool's live vote, by comparison slug (tools 0 and 1).
pub fn votes_by_comparison(conn: &Connection) -> rusqlite::Result<Vec<(String, [Tally; 2])>> {
    let mut by: std::collections::BTreeMap<String, [Tally; 2]> = Default::default();
    for ((slug, tool), t) in tallies(conn)? {
        by.entry(slug).or_default()[usize::from(tool.min(1))] = t;
    }
    Ok(by.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{email, store};

    fn issue_with(conn: &Connection, slug: &str) -> IssueNumber {
        conn.execute(
            "INSERT INTO issues (number, slot, window_after, cutoff, subject, preheader,
             comparison_count, html_parts, text_parts, state, created_at)
             VALUES (1, 's', 'a', 'c', 'S', 'P', 1, '[]', '[]', 'complete', 'now')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO issue_comparisons (issue, position, slug) VALUES (1, 0, ?)",
            [slug],
        )
        .unwrap();
        IssueNumber(1)
    }

    #[test]
    fn one_vote_per_reader_per_tool_changeable_and_erased_with_the_reader() {
        let (_dir, conn) = store();
        let issue = issue_with(&conn, "a-vs-b");
        let sub = match crate::store::subscribers::add(
            &conn,
            &email("ada@example.com"),
            None,
            crate::store::subscribers::SubscriberSource::Cli,
        )
        .unwrap()
        {
            crate::store::subscribers::AddOutcome::Added(s) => s.id,
            other => panic!("{other:?}"),
        };
        let vote = |choice, slug: &str| NewVote {
            subscriber: sub,
            issue,
            slug: slug.into(),
            tool: 1,
            choice,
            at: Utc::now(),
        };
        assert_eq!(
            record_vote(&conn, &vote(Choice::Ship, "a-vs-b")).unwrap(),
            VoteOutcome::Cast
        );
        assert_eq!(
            record_vote(&conn, &vote(Choice::Ship, "a-vs-b")).unwrap(),
            VoteOutcome::Unchanged
        );
        assert_eq!(
            record_vote(&conn, &vote(Choice::Skip, "a-vs-b")).unwrap(),
            VoteOutcome::Changed
        );
        assert_eq!(
            record_vote(&conn, &vote(Choice::Ship, "c-vs-d")).unwrap(),
            VoteOutcome::NotInIssue
        );
        let t = tallies(&conn).unwrap();
        assert_eq!(t[&("a-vs-b".to_string(), 1)], Tally { ship: 0, total: 1 });
        let mine = reader_votes(&conn, sub).unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].choice, Choice::Skip);
        crate::store::subscribers::remove(&conn, &email("ada@example.com")).unwrap();
        assert!(tallies(&conn).unwrap().is_empty());
    }
}
