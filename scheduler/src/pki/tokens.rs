//! Join tokens, as kubeadm's bootstrap tokens: `<id>.<secret>`, id
//! `[a-z0-9]{6}`, secret `[a-z0-9]{16}`. Only the id and the SHA-256 of
//! the secret are stored (`<state_dir>/pki/tokens.json`), with the expiry:
//! a stolen state directory gives no usable token. A token may be used by
//! several nodes until it expires.
//!
//! `rik-scheduler token create` writes the file while a scheduler may run;
//! the scheduler reads it at each join, so a new token works at once.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::PkiError;
use super::files::{read_optional, write_private};

const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed join token: expected [a-z0-9]{{6}}.[a-z0-9]{{16}}")]
    Malformed,
    #[error("unknown join token {0:?}")]
    Unknown(String),
    #[error("join token {id:?} expired {ago} ago")]
    Expired { id: String, ago: String },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<StoredToken>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredToken {
    id: String,
    /// Hex SHA-256 of the secret.
    secret_sha256: String,
    /// Unix seconds.
    expires: u64,
}

/// The join tokens of a cluster.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
}

impl TokenStore {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Makes a token valid for `ttl`, stores it (dropping expired ones)
    /// and returns it: the only time its secret is seen.
    pub fn create(&self, ttl: Duration) -> Result<String, PkiError> {
        let now = unix_now();
        let mut file = self.load()?;
        file.tokens.retain(|t| t.expires > now);
        let id = random(ID_LEN);
        let secret = random(SECRET_LEN);
        file.tokens.push(StoredToken {
            id: id.clone(),
            secret_sha256: digest(&secret),
            expires: now.saturating_add(ttl.as_secs()),
        });
        let json = serde_json::to_vec_pretty(&file).map_err(PkiError::Json)?;
        write_private(&self.path, &json, 0o600)?;
        Ok(format!("{id}.{secret}"))
    }

    /// Checks `token`: well-formed, known, not expired.
    pub fn check(&self, token: &str) -> Result<Result<(), TokenError>, PkiError> {
        let Some((id, secret)) = parse(token) else {
            return Ok(Err(TokenError::Malformed));
        };
        let file = self.load()?;
        let known = file
            .tokens
            .iter()
            .find(|t| t.id == id && t.secret_sha256 == digest(secret));
        let now = unix_now();
        Ok(match known {
            None => Err(TokenError::Unknown(id.to_string())),
            Some(t) if t.expires <= now => Err(TokenError::Expired {
                id: id.to_string(),
                ago: humantime::format_duration(Duration::from_secs(now - t.expires)).to_string(),
            }),
            Some(_) => Ok(()),
        })
    }

    fn load(&self) -> Result<TokenFile, PkiError> {
        match read_optional(&self.path)? {
            None => Ok(TokenFile::default()),
            Some(text) => serde_json::from_str(&text).map_err(PkiError::Json),
        }
    }
}

/// `(id, secret)` of a well-formed token.
fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, len| s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b));
    (ok(id, ID_LEN) && ok(secret, SECRET_LEN)).then_some((id, secret))
}

fn random(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_is_accepted_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path().join("tokens.json"));
        let token = store.create(Duration::from_secs(60)).unwrap();
        assert!(parse(&token).is_some(), "{token}");
        assert_eq!(store.check(&token).unwrap(), Ok(()));
        let text = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(
            !text.contains(token.split_once('.').unwrap().1),
            "secret stored in clear"
        );

        let expired = store.create(Duration::ZERO).unwrap();
        let err = store.check(&expired).unwrap().unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn bad_tokens_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path().join("tokens.json"));
        let token = store.create(Duration::from_secs(60)).unwrap();
        let (id, _) = token.split_once('.').unwrap();
        for bad in [
            "",
            "abc",
            "abcdef.0123456789abcdeF",
            "abcdef0123456789abcdefx",
        ] {
            assert_eq!(
                store.check(bad).unwrap(),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        let wrong_secret = format!("{id}.0000000000000000");
        let err = store.check(&wrong_secret).unwrap().unwrap_err();
        assert_eq!(err.to_string(), format!("unknown join token {id:?}"));
    }
}
