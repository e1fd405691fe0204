//! Registry bearer tokens: an ES256 JWT with `kid` and `x5c` headers, `aud`
//! as a string (distribution 2.8 rejects an array), a short expiry, a
//! `jti`, and the granted `access`.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::error::Result;
use crate::keys::KeyRing;
use crate::scope::{Action, Resource};

/// One granted resource, as the `access` claim lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Access {
    /// `repository` or `registry`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The repository name or `catalog`.
    pub name: String,
    /// The granted actions (may be empty: the registry then refuses).
    pub actions: Vec<Action>,
}

impl Access {
    /// The grant of `actions` on `resource`.
    pub fn new(resource: &Resource, actions: Vec<Action>) -> Self {
        match resource {
            Resource::Repository(name) => Self {
                kind: "repository",
                name: name.as_str().to_owned(),
                actions,
            },
            Resource::Catalog => Self {
                kind: "registry",
                name: "catalog".to_owned(),
                actions,
            },
        }
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
    x5c: [String; 1],
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: &'a [Access],
}

/// A signed token and when it was issued.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The compact JWT.
    pub token: String,
    /// Seconds since the epoch.
    pub issued_at: u64,
    /// Its lifetime.
    pub expires_in: Duration,
}

/// Signs tokens with the current key of a shared [`KeyRing`].
#[derive(Debug, Clone)]
pub struct Issuer {
    keys: Arc<RwLock<KeyRing>>,
    issuer: String,
    lifetime: Duration,
}

/// The shortest lifetime: the spec says clients should expect at least 60 s.
pub const MIN_LIFETIME: Duration = Duration::from_secs(60);

/// Seconds since the epoch, as tokens count time.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Issuer {
    /// Issues as `issuer` (the registry's `auth.token.issuer`) tokens that
    /// live `lifetime` (at least [`MIN_LIFETIME`]).
    pub fn new(keys: Arc<RwLock<KeyRing>>, issuer: impl Into<String>, lifetime: Duration) -> Self {
        Self {
            keys,
            issuer: issuer.into(),
            lifetime: lifetime.max(MIN_LIFETIME),
        }
    }

    /// The key ring, to rotate or export.
    pub fn keys(&self) -> &Arc<RwLock<KeyRing>> {
        &self.keys
    }

    /// A token for `subject` (`""` anonymous) and `audience` (the registry's
    /// `service`) granting `access`.
    pub fn issue(&self, subject: &str, audience: &str, access: &[Access]) -> Result<IssuedToken> {
        self.issue_at(unix_now(), self.lifetime, subject, audience, access)
    }

    /// Like [`Self::issue`] at `now` with `lifetime`: for tests of expiry.
    pub fn issue_at(
        &self,
        now: u64,
        lifetime: Duration,
        subject: &str,
        audience: &str,
        access: &[Access],
    ) -> Result<IssuedToken> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = keys.current();
        let header = Header {
            alg: "ES256",
            typ: "JWT",
            kid: key.kid(),
            x5c: [key.x5c()],
        };
        let claims = Claims {
            iss: &self.issuer,
            sub: subject,
            aud: audience,
            exp: now + lifetime.as_secs(),
            nbf: now,
            iat: now,
            jti: random_token(16),
            access,
        };
        let signing_input = format!("{}.{}", base64_json(&header), base64_json(&claims));
        let signature = key.sign(signing_input.as_bytes())?;
        Ok(IssuedToken {
            token: format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)),
            issued_at: now,
            expires_in: lifetime,
        })
    }
}

fn base64_json(value: &impl Serialize) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("token parts are plain JSON"))
}

/// `bytes` random bytes, base64url: token ids and refresh tokens.
pub(crate) fn random_token(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .expect("the system's random source works");
    URL_SAFE_NO_PAD.encode(buf)
}

/// The RFC 3339 form of `unix` seconds (UTC), for `issued_at`.
pub(crate) fn rfc3339(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    use super::*;
    use crate::keys::KidFormat;
    use crate::scope::Scope;

    #[test]
    fn a_token_verifies_with_the_public_key_and_carries_the_claims() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::open(dir.path(), "t", KidFormat::Libtrust).unwrap();
        let point = ring.current().public_point().to_vec();
        let kid = ring.current().kid().to_owned();
        let issuer = Issuer::new(
            Arc::new(RwLock::new(ring)),
            "kisara",
            Duration::from_secs(1),
        );
        let scope = Scope::parse("repository:ctf/x:pull,push").unwrap();
        let access = [Access::new(&scope.resource, vec![Action::Pull])];
        let token = issuer.issue("alice", "registry", &access).unwrap();
        assert_eq!(
            token.expires_in, MIN_LIFETIME,
            "lifetimes under 60 s are raised"
        );
        let parts: Vec<_> = token.token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["kid"], kid);
        assert_eq!(header["alg"], "ES256");
        assert!(header["x5c"][0].as_str().unwrap().len() > 100);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "registry", "aud is a string");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
        assert_eq!(
            claims["access"],
            serde_json::json!([{"type": "repository", "name": "ctf/x", "actions": ["pull"]}])
        );
        let other = issuer.issue("alice", "registry", &access).unwrap();
        let jti = |t: &str| {
            let claims = t.split('.').nth(1).unwrap();
            serde_json::from_slice::<serde_json::Value>(&URL_SAFE_NO_PAD.decode(claims).unwrap())
                .unwrap()["jti"]
                .clone()
        };
        assert_ne!(jti(&token.token), jti(&other.token));
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
