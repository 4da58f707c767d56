//! API keys: creation, lookup and verification, stored in SQLite or
//! PostgreSQL (one schema, one set of migrations, through sqlx's `Any`).
//!
//! A secret is `sk-hfms-` + a 12-character id + 32 random characters, all
//! base62 from the OS's random source (the random part alone is 190 bits).
//! The database keeps the id (to find the row), a random salt and
//! SHA-256(salt ‖ secret). A slow password hash (argon2) protects secrets
//! people choose, which are guessable; these are not, so a fast hash is as
//! safe against a stolen table and costs ~1 µs per request instead of tens
//! of milliseconds. The comparison is constant-time.

use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use subtle::ConstantTimeEq;

use crate::error::{AccessError, Result};

pub const SECRET_PREFIX: &str = "sk-hfms-";
const ID_LEN: usize = 12;
const RANDOM_LEN: usize = 32;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Longest name, owner, pattern or metadata a key may carry (bytes): the
/// admin API takes them from clients.
pub const MAX_TEXT: usize = 256;
pub const MAX_MODELS: usize = 64;
pub const MAX_METADATA: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The OpenAI API (`/v1/*`).
    Inference,
    /// Keys, models, metrics and status.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Inference => "inference",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "inference" => Some(Scope::Inference),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What a key may do; everything but its secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub owner: Option<String>,
    pub scopes: Vec<Scope>,
    /// Glob patterns of model ids or aliases; empty: every model.
    pub models: Vec<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u64>,
    /// Most cost per UTC day / calendar month (usage priced by `--price`).
    pub budget_daily: Option<f64>,
    pub budget_monthly: Option<f64>,
    pub expires_at: Option<i64>,
    pub metadata: serde_json::Value,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    #[serde(skip)]
    #[schema(ignore)]
    model_set: Arc<GlobSet>,
    /// Changes when the secret is rotated (a digest of its salt): a
    /// dashboard session made with an earlier secret no longer matches.
    #[serde(skip)]
    #[schema(ignore)]
    pub secret_version: String,
}

impl ApiKey {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Whether the key may use a model known by any of `names` (its id and
    /// aliases).
    pub fn allows_model<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> bool {
        self.models.is_empty() || names.into_iter().any(|n| self.model_set.is_match(n))
    }

    /// Usable now: not revoked, not expired.
    pub fn active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| t > now)
    }
}

/// The settings of a new key, or the changes to one. Absent: unchanged;
/// for the optional ones, `null` clears (`Some(None)`: no limit).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub owner: Option<Option<String>>,
    pub scopes: Option<Vec<Scope>>,
    pub models: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>)]
    pub rpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>)]
    pub tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<u64>)]
    pub max_concurrent: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<f64>)]
    pub budget_daily: Option<Option<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<f64>)]
    pub budget_monthly: Option<Option<f64>>,
    /// Unix seconds.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>)]
    pub expires_at: Option<Option<i64>>,
    pub metadata: Option<serde_json::Value>,
}

/// A present field, `null` included (serde's `Option` alone reads `null`
/// as absent).
fn nullable<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl KeySettings {
    /// Refuse what a key cannot hold (the admin API's 400s).
    pub fn validate(&self) -> Result<()> {
        let text = |field: &'static str, v: &Option<String>| match v {
            Some(s) if s.trim().is_empty() => Err(AccessError::invalid(field, "must not be empty")),
            Some(s) if s.len() > MAX_TEXT => Err(AccessError::invalid(field, format!("at most {MAX_TEXT} bytes"))),
            _ => Ok(()),
        };
        text("name", &self.name)?;
        text("owner", &self.owner.clone().flatten())?;
        if let Some(scopes) = &self.scopes
            && scopes.is_empty()
        {
            return Err(AccessError::invalid("scopes", "a key needs at least one scope"));
        }
        if let Some(models) = &self.models {
            if models.len() > MAX_MODELS {
                return Err(AccessError::invalid("models", format!("at most {MAX_MODELS} patterns")));
            }
            for m in models {
                text("models", &Some(m.clone()))?;
            }
            model_set(models)?;
        }
        for (field, v) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("max_concurrent", self.max_concurrent),
        ] {
            match v.flatten() {
                Some(0) => return Err(AccessError::invalid(field, "must be at least 1 (null for no limit)")),
                Some(n) if n > i64::MAX as u64 => return Err(AccessError::invalid(field, "too large")),
                _ => {}
            }
        }
        for (field, v) in [
            ("budget_daily", self.budget_daily),
            ("budget_monthly", self.budget_monthly),
        ] {
            if let Some(b) = v.flatten()
                && !(0.0..=1e15).contains(&b)
            {
                return Err(AccessError::invalid(
                    field,
                    "a cost from 0 to 1e15 (null for no budget)",
                ));
            }
        }
        if let Some(t) = self.expires_at.flatten()
            && t <= unix_now()
        {
            return Err(AccessError::invalid(
                "expires_at",
                "must be in the future (Unix seconds)",
            ));
        }
        if let Some(m) = &self.metadata {
            if !m.is_object() {
                return Err(AccessError::invalid("metadata", "must be a JSON object"));
            }
            if m.to_string().len() > MAX_METADATA {
                return Err(AccessError::invalid(
                    "metadata",
                    format!("at most {MAX_METADATA} bytes"),
                ));
            }
        }
        Ok(())
    }
}

fn model_set(patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| AccessError::invalid("models", format!("{p:?}: {e}")))?);
    }
    b.build().map_err(|e| AccessError::invalid("models", e.to_string()))
}

/// `n` uniform base62 characters from the OS's random source.
pub(crate) fn random_base62(n: usize) -> Result<String> {
    // Rejection sampling keeps every character uniform.
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf).map_err(|e| AccessError::Internal(format!("the OS random source: {e}")))?;
        for &b in &buf {
            if b < 248 && out.len() < n {
                out.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

fn hash(salt: &str, secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update(secret.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The id part of a presented secret, if it has the shape of one.
fn id_of(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix(SECRET_PREFIX)?;
    (rest.len() == ID_LEN + RANDOM_LEN && rest.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| &rest[..ID_LEN])
}

/// The table's columns, in `from_row`'s and the insert's order (a macro so
/// that queries stay static strings).
macro_rules! columns {
    () => {
        "id, salt, hash, name, owner, scopes, models, rpm, tpm, max_concurrent, expires_at, metadata, \
         created_at, revoked_at, last_used_at, budget_daily, budget_monthly"
    };
}

fn limit(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

fn from_row(row: &AnyRow) -> Result<(ApiKey, String, String)> {
    let scopes: String = row.try_get("scopes")?;
    let models: String = row.try_get("models")?;
    // Unreadable patterns must not mean "every model": fail closed.
    let models: Vec<String> = serde_json::from_str(&models)
        .map_err(|e| AccessError::Database(format!("the models of a key are unreadable: {e}")))?;
    let metadata: String = row.try_get("metadata")?;
    let key = ApiKey {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        scopes: scopes.split(',').filter_map(Scope::parse).collect(),
        model_set: Arc::new(model_set(&models)?),
        models,
        rpm: limit(row.try_get("rpm")?),
        tpm: limit(row.try_get("tpm")?),
        max_concurrent: limit(row.try_get("max_concurrent")?),
        budget_daily: row.try_get("budget_daily")?,
        budget_monthly: row.try_get("budget_monthly")?,
        expires_at: row.try_get("expires_at")?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
        secret_version: String::new(),
    };
    let salt: String = row.try_get("salt")?;
    let key = ApiKey {
        secret_version: hash("version", &salt)[..16].to_string(),
        ..key
    };
    Ok((key, salt, row.try_get("hash")?))
}

fn scopes_text(scopes: &[Scope]) -> String {
    scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
}

/// The key table.
#[derive(Clone)]
pub struct KeyStore {
    pool: AnyPool,
}

impl KeyStore {
    /// Open (creating a SQLite file and its folder if needed) and migrate.
    /// `url`: `sqlite://PATH` or `postgres://…`.
    pub async fn open(url: &str) -> Result<KeyStore> {
        sqlx::any::install_default_drivers();
        let url = if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| AccessError::Database(format!("creating {}: {e}", dir.display())))?;
            }
            if url.contains('?') {
                url.to_string()
            } else {
                format!("{url}?mode=rwc")
            }
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(&url)
            .await?;
        if url.starts_with("sqlite:") {
            // Readers do not wait for the writer.
            sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await?;
        }
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| AccessError::Database(format!("migrating the database: {e}")))?;
        Ok(KeyStore { pool })
    }

    /// A new key and its secret (shown once, never stored).
    pub async fn create(&self, s: KeySettings) -> Result<(ApiKey, String)> {
        s.validate()?;
        let name = s
            .name
            .clone()
            .ok_or_else(|| AccessError::invalid("name", "a key needs a name"))?;
        let id = random_base62(ID_LEN)?;
        let secret = format!("{SECRET_PREFIX}{id}{}", random_base62(RANDOM_LEN)?);
        let salt = random_base62(22)?;
        let scopes = s.scopes.clone().unwrap_or_else(|| vec![Scope::Inference]);
        let models = s.models.clone().unwrap_or_default();
        let now = unix_now();
        sqlx::query(concat!(
            "INSERT INTO api_keys (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, NULL, NULL, $14, $15)"
        ))
        .bind(&id)
        .bind(&salt)
        .bind(hash(&salt, &secret))
        .bind(&name)
        .bind(s.owner.clone().flatten())
        .bind(scopes_text(&scopes))
        .bind(serde_json::to_string(&models).unwrap_or_else(|_| "[]".into()))
        .bind(s.rpm.flatten().map(|v| v as i64))
        .bind(s.tpm.flatten().map(|v| v as i64))
        .bind(s.max_concurrent.flatten().map(|v| v as i64))
        .bind(s.expires_at.flatten())
        .bind(s.metadata.clone().unwrap_or_else(|| serde_json::json!({})).to_string())
        .bind(now)
        .bind(s.budget_daily.flatten())
        .bind(s.budget_monthly.flatten())
        .execute(&self.pool)
        .await?;
        let key = self
            .get(&id)
            .await?
            .ok_or_else(|| AccessError::Internal("a new key vanished".into()))?;
        Ok((key, secret))
    }

    pub async fn get(&self, id: &str) -> Result<Option<ApiKey>> {
        Ok(self.row(id).await?.map(|(k, _, _)| k))
    }

    async fn row(&self, id: &str) -> Result<Option<(ApiKey, String, String)>> {
        let row = sqlx::query(concat!("SELECT ", columns!(), " FROM api_keys WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Every key, newest first.
    pub async fn list(&self) -> Result<Vec<ApiKey>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM api_keys ORDER BY created_at DESC, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| from_row(r).map(|(k, _, _)| k)).collect()
    }

    /// Keys that can authenticate now.
    pub async fn count_active(&self) -> Result<u64> {
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)",
        )
        .bind(unix_now())
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok(n as u64)
    }

    /// Whether a key was ever made (revoked and expired ones count: once
    /// keys are in use, revoking the last must not open the server).
    pub async fn any(&self) -> Result<bool> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM api_keys")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(n > 0)
    }

    /// Change what `s` names; None when there is no such key.
    pub async fn update(&self, id: &str, s: KeySettings) -> Result<Option<ApiKey>> {
        s.validate()?;
        // Who may administer changes: sessions start over (else taking the
        // admin scope away and back would revive them).
        let ends_sessions = s.scopes.is_some() || s.expires_at.is_some();
        let Some(mut k) = self.get(id).await? else {
            return Ok(None);
        };
        if let Some(v) = s.name {
            k.name = v;
        }
        if let Some(v) = s.owner {
            k.owner = v;
        }
        if let Some(v) = s.scopes {
            k.scopes = v;
        }
        if let Some(v) = s.models {
            k.models = v;
        }
        for (slot, v) in [
            (&mut k.rpm, s.rpm),
            (&mut k.tpm, s.tpm),
            (&mut k.max_concurrent, s.max_concurrent),
        ] {
            if let Some(v) = v {
                *slot = v;
            }
        }
        for (slot, v) in [
            (&mut k.budget_daily, s.budget_daily),
            (&mut k.budget_monthly, s.budget_monthly),
        ] {
            if let Some(v) = v {
                *slot = v;
            }
        }
        if let Some(v) = s.expires_at {
            k.expires_at = v;
        }
        if let Some(m) = s.metadata {
            k.metadata = m;
        }
        sqlx::query(
            "UPDATE api_keys SET name = $1, owner = $2, scopes = $3, models = $4, rpm = $5, tpm = $6, \
             max_concurrent = $7, expires_at = $8, metadata = $9, budget_daily = $10, budget_monthly = $11 \
             WHERE id = $12",
        )
        .bind(&k.name)
        .bind(k.owner.clone())
        .bind(scopes_text(&k.scopes))
        .bind(serde_json::to_string(&k.models).unwrap_or_else(|_| "[]".into()))
        .bind(k.rpm.map(|v| v as i64))
        .bind(k.tpm.map(|v| v as i64))
        .bind(k.max_concurrent.map(|v| v as i64))
        .bind(k.expires_at)
        .bind(k.metadata.to_string())
        .bind(k.budget_daily)
        .bind(k.budget_monthly)
        .bind(id)
        .execute(&self.pool)
        .await?;
        if ends_sessions {
            self.end_sessions(id).await?;
        }
        self.get(id).await
    }

    /// End the dashboard sessions a key signed in (`crate::sessions`).
    async fn end_sessions(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM admin_sessions WHERE subject LIKE $1")
            .bind(format!("{id}:%"))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Revoke (the row stays, for usage history); false when unknown.
    pub async fn revoke(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(unix_now())
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.end_sessions(id).await?;
        Ok(done.rows_affected() > 0 || self.get(id).await?.is_some())
    }

    /// A new secret for the same key (same id, limits and history); the old
    /// secret stops working.
    pub async fn rotate(&self, id: &str) -> Result<Option<(ApiKey, String)>> {
        let Some(k) = self.get(id).await? else {
            return Ok(None);
        };
        if k.revoked_at.is_some() {
            return Err(AccessError::invalid("id", "a revoked key cannot be rotated"));
        }
        let secret = format!("{SECRET_PREFIX}{id}{}", random_base62(RANDOM_LEN)?);
        let salt = random_base62(22)?;
        sqlx::query("UPDATE api_keys SET salt = $1, hash = $2 WHERE id = $3 AND revoked_at IS NULL")
            .bind(&salt)
            .bind(hash(&salt, &secret))
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.end_sessions(id).await?;
        Ok(Some((k, secret)))
    }

    /// The key a presented secret belongs to, if it matches one (revoked or
    /// expired keys are returned too: the caller says why they fail).
    pub async fn verify(&self, presented: &str) -> Result<Option<ApiKey>> {
        let Some(id) = id_of(presented) else {
            return Ok(None);
        };
        let Some((key, salt, stored)) = self.row(id).await? else {
            return Ok(None);
        };
        let ok: bool = hash(&salt, presented).as_bytes().ct_eq(stored.as_bytes()).into();
        Ok(ok.then_some(key))
    }

    /// Note that a key was used (the caller debounces).
    pub async fn touch(&self, id: &str, at: i64) -> Result<()> {
        sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
            .bind(at)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The database (usage records live beside the keys).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (KeyStore, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "hfms-keys-{}-{}",
            std::process::id(),
            random_base62(6).unwrap()
        ));
        let url = format!("sqlite://{}/keys.db", dir.display());
        (KeyStore::open(&url).await.unwrap(), dir)
    }

    #[tokio::test]
    async fn a_key_verifies_only_with_its_own_secret_and_survives_a_reopen() {
        let (s, dir) = store().await;
        let (k, secret) = s
            .create(KeySettings {
                name: Some("ci".into()),
                models: Some(vec!["smollm2".into(), "HuggingFaceTB/*".into()]),
                rpm: Some(Some(60)),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(secret.starts_with("sk-hfms-") && secret.len() == 8 + 44, "{secret}");
        assert_eq!(s.verify(&secret).await.unwrap().unwrap().id, k.id);
        // One character off, the id alone, garbage: no key.
        let mut wrong = secret.clone().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'a' { b'b' } else { b'a' };
        for bad in [
            String::from_utf8(wrong).unwrap(),
            format!("sk-hfms-{}", k.id),
            "x".repeat(10_000),
            String::new(),
        ] {
            assert!(s.verify(&bad).await.unwrap().is_none(), "{bad:.40}");
        }
        assert!(k.allows_model(["HuggingFaceTB/SmolLM2-135M-Instruct"]));
        assert!(k.allows_model(["smollm2"]));
        assert!(!k.allows_model(["sentence-transformers/all-MiniLM-L6-v2", "all-minilm"]));
        // The table holds no secret.
        let db = std::fs::read(dir.join("keys.db")).unwrap();
        let wal = std::fs::read(dir.join("keys.db-wal")).unwrap_or_default();
        let needle = &secret.as_bytes()[8..];
        for bytes in [&db, &wal] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "the secret is on disk"
            );
        }
        s.close().await;
        let again = KeyStore::open(&format!("sqlite://{}/keys.db", dir.display()))
            .await
            .unwrap();
        assert_eq!(again.verify(&secret).await.unwrap().unwrap().rpm, Some(60));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn rotate_revoke_and_update() {
        let (s, dir) = store().await;
        let (k, old) = s
            .create(KeySettings {
                name: Some("a".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(s.count_active().await.unwrap(), 1);
        let (_, new) = s.rotate(&k.id).await.unwrap().unwrap();
        assert!(s.verify(&old).await.unwrap().is_none());
        assert!(s.verify(&new).await.unwrap().is_some());
        let k2 = s
            .update(
                &k.id,
                KeySettings {
                    rpm: Some(Some(5)),
                    scopes: Some(vec![Scope::Admin]),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (k2.rpm, k2.name.as_str(), k2.scopes.as_slice()),
            (Some(5), "a", &[Scope::Admin][..])
        );
        // `null` clears a limit; absent leaves it.
        let clear: KeySettings = serde_json::from_str(r#"{"rpm": null, "budget_daily": 2.5}"#).unwrap();
        assert!(clear.tpm.is_none() && clear.rpm == Some(None));
        let k3 = s.update(&k.id, clear).await.unwrap().unwrap();
        assert_eq!((k3.rpm, k3.budget_daily, k3.scopes.len()), (None, Some(2.5), 1));
        assert!(s.revoke(&k.id).await.unwrap());
        assert!(!s.revoke("nosuchkey").await.unwrap());
        assert!(!s.verify(&new).await.unwrap().unwrap().active(unix_now()));
        assert_eq!(s.count_active().await.unwrap(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn hostile_settings_are_refused() {
        let bad = [
            KeySettings {
                name: Some("".into()),
                ..Default::default()
            },
            KeySettings {
                name: Some("x".repeat(MAX_TEXT + 1)),
                ..Default::default()
            },
            KeySettings {
                scopes: Some(vec![]),
                ..Default::default()
            },
            KeySettings {
                models: Some(vec!["[".into()]),
                ..Default::default()
            },
            KeySettings {
                models: Some(vec!["a".into(); MAX_MODELS + 1]),
                ..Default::default()
            },
            KeySettings {
                rpm: Some(Some(0)),
                ..Default::default()
            },
            KeySettings {
                tpm: Some(Some(u64::MAX)),
                ..Default::default()
            },
            KeySettings {
                budget_daily: Some(Some(f64::NAN)),
                ..Default::default()
            },
            KeySettings {
                budget_monthly: Some(Some(-1.0)),
                ..Default::default()
            },
            KeySettings {
                budget_monthly: Some(Some(f64::INFINITY)),
                ..Default::default()
            },
            KeySettings {
                expires_at: Some(Some(1)),
                ..Default::default()
            },
            KeySettings {
                metadata: Some(serde_json::json!([1])),
                ..Default::default()
            },
            KeySettings {
                metadata: Some(serde_json::json!({"x": "y".repeat(MAX_METADATA)})),
                ..Default::default()
            },
        ];
        for s in bad {
            assert!(s.validate().is_err(), "{s:?}");
        }
    }
}
