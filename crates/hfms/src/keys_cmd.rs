//! `hfms keys`: create, list, show, revoke and rotate API keys in the
//! database a server uses (a running server sees new keys at once and
//! changes within --auth-cache-seconds).

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use hfms_access::{ApiKey, KeySettings, KeyStore, Scope};

use crate::config::StoreArgs;

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    #[command(subcommand)]
    pub action: KeysAction,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Create a key and print its secret (shown this once).
    Create(CreateArgs),
    /// List every key (never their secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Show { id: String },
    /// Revoke a key (it stays listed, for its history).
    Revoke { id: String },
    /// Give a key a new secret (printed once); the old one stops working.
    Rotate { id: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// What the key is for.
    #[arg(long)]
    pub name: String,
    /// Who it belongs to (a person or team).
    #[arg(long)]
    pub owner: Option<String>,
    /// Scopes: inference (the OpenAI API), admin (keys, models, metrics).
    #[arg(long = "scope", value_delimiter = ',', default_value = "inference",
          value_parser = ["inference", "admin"])]
    pub scopes: Vec<String>,
    /// Models it may use: ids, aliases or glob patterns (all when none).
    #[arg(long = "model", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Tokens per minute (prompt and completion).
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    /// Most cost per UTC day (usage priced by the server's --price).
    #[arg(long)]
    pub budget_daily: Option<f64>,
    /// Most cost per calendar month (UTC).
    #[arg(long)]
    pub budget_monthly: Option<f64>,
    /// Expires after this long ("30d", "12h").
    #[arg(long)]
    pub expires_in: Option<String>,
}

pub fn run(args: KeysArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let url = args.store.database_url()?;
        let store = KeyStore::open(&url)
            .await
            .with_context(|| format!("opening {}", crate::config::redact_url(&url)))?;
        let out = act(&store, args.action).await;
        store.close().await;
        out
    })
}

async fn act(store: &KeyStore, action: KeysAction) -> Result<()> {
    match action {
        KeysAction::Create(c) => {
            let expires_at = match &c.expires_in {
                Some(d) => {
                    let d = humantime::parse_duration(d).with_context(|| format!("--expires-in {d:?}"))?;
                    let secs = i64::try_from(d.as_secs()).context("--expires-in is too long")?;
                    Some(
                        hfms_access::keys::unix_now()
                            .checked_add(secs)
                            .context("--expires-in is too long")?,
                    )
                }
                None => None,
            };
            let settings = KeySettings {
                name: Some(c.name),
                owner: Some(c.owner),
                scopes: Some(c.scopes.iter().filter_map(|s| Scope::parse(s)).collect()),
                models: (!c.models.is_empty()).then_some(c.models),
                rpm: Some(c.rpm),
                tpm: Some(c.tpm),
                max_concurrent: Some(c.max_concurrent),
                budget_daily: Some(c.budget_daily),
                budget_monthly: Some(c.budget_monthly),
                expires_at: Some(expires_at),
                metadata: None,
            };
            let (key, secret) = store.create(settings).await?;
            eprintln!("created key {} ({}); its secret, shown only now:", key.id, key.name);
            println!("{secret}");
        }
        KeysAction::List { json } => {
            let keys = store.list().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                print!("{}", table(&keys));
            }
        }
        KeysAction::Show { id } => match store.get(&id).await? {
            Some(k) => println!("{}", serde_json::to_string_pretty(&k)?),
            None => bail!("no key with id {id}"),
        },
        KeysAction::Revoke { id } => {
            if !store.revoke(&id).await? {
                bail!("no key with id {id}");
            }
            eprintln!("revoked {id}");
        }
        KeysAction::Rotate { id } => match store.rotate(&id).await? {
            Some((k, secret)) => {
                eprintln!("new secret for {} ({}), shown only now:", k.id, k.name);
                println!("{secret}");
            }
            None => bail!("no key with id {id}"),
        },
    }
    Ok(())
}

fn table(keys: &[ApiKey]) -> String {
    let now = hfms_access::keys::unix_now();
    let mut out = format!(
        "{:<12}  {:<20}  {:<16}  {:<8}  {:>8}  {:>10}  {:<24}\n",
        "ID", "NAME", "SCOPES", "STATE", "RPM", "TPM", "MODELS"
    );
    let limit = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for k in keys {
        let state = if k.revoked_at.is_some() {
            "revoked"
        } else if !k.active(now) {
            "expired"
        } else {
            "active"
        };
        let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
        let models = if k.models.is_empty() {
            "*".to_string()
        } else {
            k.models.join(",")
        };
        out.push_str(&format!(
            "{:<12}  {:<20.20}  {:<16}  {:<8}  {:>8}  {:>10}  {:<24.24}\n",
            k.id,
            k.name,
            scopes.join(","),
            state,
            limit(k.rpm),
            limit(k.tpm),
            models
        ));
    }
    out
}
