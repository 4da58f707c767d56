//! Sign-in sessions of the admin dashboard, in the key database (so a
//! session made through one replica works on the others). The cookie holds
//! a random token; the table holds only its SHA-256 (the token has 190
//! random bits, so no salt or slow hash is needed), the subject it signs
//! in, and its expiry.

use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};

use crate::error::Result;
use crate::keys::{random_base62, unix_now};

const TOKEN_LEN: usize = 32;

#[derive(Clone)]
pub struct SessionStore {
    pool: AnyPool,
}

/// Whom a session signs in: a key's id, or the bootstrap admin key
/// (`operator:` + a fingerprint of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub subject: String,
    pub expires_at: i64,
}

fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl SessionStore {
    pub fn new(pool: AnyPool) -> Self {
        SessionStore { pool }
    }

    /// A new session for `subject`, valid for `ttl_secs`; its token.
    pub async fn create(&self, subject: &str, ttl_secs: i64) -> Result<String> {
        let token = random_base62(TOKEN_LEN)?;
        let now = unix_now();
        // Expired sessions go when new ones come (sign-ins are rare).
        sqlx::query("DELETE FROM admin_sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO admin_sessions (token_hash, subject, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(digest(&token))
            .bind(subject)
            .bind(now)
            .bind(now.saturating_add(ttl_secs))
            .execute(&self.pool)
            .await?;
        Ok(token)
    }

    /// The live session a token names.
    pub async fn get(&self, token: &str) -> Result<Option<Session>> {
        if token.len() != TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Ok(None);
        }
        let row = sqlx::query("SELECT subject, expires_at FROM admin_sessions WHERE token_hash = $1")
            .bind(digest(token))
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let s = Session {
            subject: row.try_get("subject")?,
            expires_at: row.try_get("expires_at")?,
        };
        Ok((s.expires_at > unix_now()).then_some(s))
    }

    pub async fn delete(&self, token: &str) -> Result<()> {
        sqlx::query("DELETE FROM admin_sessions WHERE token_hash = $1")
            .bind(digest(token))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyStore;

    #[tokio::test]
    async fn a_session_lives_until_it_expires_or_ends() {
        let dir = std::env::temp_dir().join(format!("hfms-sessions-{}-{}", std::process::id(), unix_now()));
        let keys = KeyStore::open(&format!("sqlite://{}/s.db", dir.display()))
            .await
            .unwrap();
        let s = SessionStore::new(keys.pool().clone());
        let t = s.create("abc", 60).await.unwrap();
        assert_eq!(s.get(&t).await.unwrap().unwrap().subject, "abc");
        for bad in ["", "x", &"A".repeat(TOKEN_LEN), &"é".repeat(16), &t[1..]] {
            assert!(s.get(bad).await.unwrap().is_none(), "{bad}");
        }
        let gone = s.create("old", -1).await.unwrap();
        assert!(s.get(&gone).await.unwrap().is_none());
        s.delete(&t).await.unwrap();
        assert!(s.get(&t).await.unwrap().is_none());
        keys.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
