//! `hfms usage`: totals of the usage records in a server's database, as a
//! table or CSV.

use anyhow::{Context, Result, bail};
use clap::Args;
use hfms_access::KeyStore;
use hfms_access::usage::{GroupBy, UsageQuery, summarize, to_csv};

use crate::config::StoreArgs;

#[derive(Debug, Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only this key (its id).
    #[arg(long)]
    pub key: Option<String>,
    /// Only this model (its id).
    #[arg(long)]
    pub model: Option<String>,
    /// Since this long ago ("24h", "7d").
    #[arg(long)]
    pub since: Option<String>,
    /// One row per hour, day, model or key.
    #[arg(long, value_parser = ["hour", "day", "model", "key"])]
    pub group_by: Option<String>,
    /// Print CSV instead of a table.
    #[arg(long)]
    pub csv: bool,
}

pub fn run(args: UsageArgs) -> Result<()> {
    let from_ms = match &args.since {
        Some(s) => {
            let d = humantime::parse_duration(s).with_context(|| format!("--since {s:?}"))?;
            let now = hfms_access::keys::unix_now().saturating_mul(1000);
            Some(now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        }
        None => None,
    };
    let query = UsageQuery {
        key: args.key.clone(),
        model: args.model.clone(),
        from_ms,
        to_ms: None,
        group_by: args.group_by.as_deref().and_then(GroupBy::parse),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let rows = runtime.block_on(async {
        let url = args.store.database_url()?;
        let store = KeyStore::open(&url)
            .await
            .with_context(|| format!("opening {}", crate::config::redact_url(&url)))?;
        let rows = summarize(store.pool(), &query).await;
        store.close().await;
        anyhow::Ok(rows?)
    })?;
    if args.csv {
        print!("{}", to_csv(&rows));
        return Ok(());
    }
    if rows.is_empty() {
        bail!("no usage recorded for this selection");
    }
    println!(
        "{:<40}  {:>9}  {:>7}  {:>6}  {:>12}  {:>12}  {:>12}  {:>10}",
        "GROUP", "REQUESTS", "ERRORS", "HITS", "PROMPT", "CACHED", "COMPLETION", "COST"
    );
    for r in &rows {
        let group = match query.group_by {
            Some(GroupBy::Hour | GroupBy::Day) => r
                .group
                .parse::<u64>()
                .map(|ms| {
                    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
                        .to_string()
                })
                .unwrap_or_else(|_| r.group.clone()),
            _ => r.group.clone(),
        };
        println!(
            "{:<40.40}  {:>9}  {:>7}  {:>6}  {:>12}  {:>12}  {:>12}  {:>10.4}",
            group, r.requests, r.errors, r.cache_hits, r.prompt_tokens, r.cached_tokens, r.completion_tokens, r.cost
        );
    }
    Ok(())
}
