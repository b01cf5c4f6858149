//! JWT bearer tokens: HS256 with a shared secret, RS256 and ES256 with the
//! public keys of a JWKS file (re-read when it changes, at most once a
//! second). Issuer and audience must be the configured ones, `exp` must be
//! present and in the future, `nbf` (if present) in the past, both with
//! `leeway_s`. A token's algorithm picks the key family: HS256 only ever
//! checks against the shared secret, RS256 and ES256 only against a JWKS
//! key of that algorithm, so a token signed with the HMAC of a public key
//! is refused; `alg: none` does not parse.

use super::{Principal, Refused, Role};
use crate::clock::SharedClock;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// How often the JWKS file's modification time is looked at.
const JWKS_CHECK_EVERY: Duration = Duration::from_secs(1);
/// An HS256 secret shorter than the hash is refused (RFC 7518, 3.2).
const HS256_SECRET_BYTES_MIN: usize = 32;
/// The longest subject a token may carry (as a mutation's `client`).
const SUBJECT_CHARS_MAX: usize = 128;
/// A JWKS file larger than this is refused rather than read.
const JWKS_BYTES_MAX: u64 = 1 << 20;

/// `[jwt]` in the configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry (one of its values, if a list).
    pub audience: String,
    /// A JWKS file with the RS256 and ES256 public keys; "" for none.
    pub jwks_file: String,
    /// A file holding the HS256 shared secret (its bytes, trailing newline
    /// dropped); "" for none.
    pub hs256_secret_file: String,
    /// The claim naming the client.
    pub subject_claim: String,
    /// The claim naming the role: admin, writer or reader.
    pub role_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_s: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: String::new(),
            audience: String::new(),
            jwks_file: String::new(),
            hs256_secret_file: String::new(),
            subject_claim: "sub".into(),
            role_claim: "role".into(),
            leeway_s: 30,
        }
    }
}

impl JwtConfig {
    /// What `auth = "jwt"` needs, checked without reading any file.
    pub fn validate(&self) -> Result<(), String> {
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err("auth \"jwt\" needs jwt.issuer and jwt.audience".into());
        }
        if self.jwks_file.is_empty() && self.hs256_secret_file.is_empty() {
            return Err(
                "auth \"jwt\" needs jwt.jwks_file (RS256, ES256) or jwt.hs256_secret_file (HS256)"
                    .into(),
            );
        }
        if self.subject_claim.is_empty() || self.role_claim.is_empty() {
            return Err("jwt.subject_claim and jwt.role_claim must name claims".into());
        }
        Ok(())
    }
}

struct PublicKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

struct Jwks {
    keys: Vec<PublicKey>,
    /// The file's modification time and length when last read.
    stamp: Option<(SystemTime, u64)>,
    checked: Option<Duration>,
}

/// Verifies tokens; one per server.
pub struct JwtVerifier {
    config: JwtConfig,
    hmac: Option<DecodingKey>,
    jwks: Mutex<Jwks>,
    clock: SharedClock,
}

impl JwtVerifier {
    /// Reads the secret and the JWKS file; `Err` says what is wrong with them.
    pub fn new(config: JwtConfig, clock: SharedClock) -> Result<JwtVerifier, String> {
        config.validate()?;
        let hmac = if config.hs256_secret_file.is_empty() {
            None
        } else {
            let path = &config.hs256_secret_file;
            let mut secret = std::fs::read(path)
                .map_err(|e| format!("cannot read jwt.hs256_secret_file {path}: {e}"))?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            if secret.len() < HS256_SECRET_BYTES_MIN {
                return Err(format!(
                    "jwt.hs256_secret_file {path} holds {} bytes; an HS256 secret needs at least {HS256_SECRET_BYTES_MIN}",
                    secret.len()
                ));
            }
            Some(DecodingKey::from_secret(&secret))
        };
        let mut jwks = Jwks {
            keys: Vec::new(),
            stamp: None,
            checked: None,
        };
        if !config.jwks_file.is_empty() {
            let path = PathBuf::from(&config.jwks_file);
            let (keys, stamp) = read_jwks(&path)?;
            info!(path = %path.display(), keys = keys.len(), "JWKS read");
            jwks.keys = keys;
            jwks.stamp = Some(stamp);
        }
        Ok(JwtVerifier {
            config,
            hmac,
            jwks: Mutex::new(jwks),
            clock,
        })
    }

    /// The principal a token stands for.
    pub fn verify(&self, token: &str) -> Result<Principal, Refused> {
        let header = decode_header(token).map_err(|_| Refused::Malformed)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hmac.clone().ok_or(Refused::Unknown)?,
            Algorithm::RS256 | Algorithm::ES256 => self.public_key(header.alg, header.kid)?,
            _ => return Err(Refused::Unknown),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway_s;
        let claims = decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => Refused::Expired,
                ErrorKind::ImmatureSignature => Refused::NotYetValid,
                ErrorKind::InvalidIssuer => Refused::WrongIssuer,
                ErrorKind::InvalidAudience => Refused::WrongAudience,
                ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Json(_) => {
                    Refused::Malformed
                }
                _ => Refused::Unknown,
            })?
            .claims;
        let subject = claims
            .get(&self.config.subject_claim)
            .and_then(Value::as_str)
            .filter(|s| {
                let n = s.chars().count();
                n > 0 && n <= SUBJECT_CHARS_MAX && !s.contains('\0')
            })
            .ok_or(Refused::Unknown)?;
        let role = claims
            .get(&self.config.role_claim)
            .and_then(Value::as_str)
            .and_then(Role::parse)
            .ok_or(Refused::Unknown)?;
        Ok(Principal {
            subject: subject.to_owned(),
            role,
        })
    }

    /// The JWKS key for a token's algorithm and `kid` (without a `kid`, the
    /// one key of that algorithm, if there is one).
    fn public_key(&self, alg: Algorithm, kid: Option<String>) -> Result<DecodingKey, Refused> {
        let mut jwks = self.jwks.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut jwks);
        let mut candidates = jwks
            .keys
            .iter()
            .filter(|k| k.alg == alg && (kid.is_none() || k.kid == kid));
        match (candidates.next(), candidates.next()) {
            (Some(found), None) => Ok(found.key.clone()),
            _ => Err(Refused::Unknown),
        }
    }

    /// Re-reads the JWKS file if it changed; a file that does not parse
    /// leaves the keys as they were, and says so in the log.
    fn refresh(&self, jwks: &mut Jwks) {
        if self.config.jwks_file.is_empty() {
            return;
        }
        let now = self.clock.elapsed();
        if jwks.checked.is_some_and(|at| now < at + JWKS_CHECK_EVERY) {
            return;
        }
        jwks.checked = Some(now);
        let path = Path::new(&self.config.jwks_file);
        let Ok(stamp) = file_stamp(path) else {
            return;
        };
        if jwks.stamp == Some(stamp) {
            return;
        }
        match read_jwks(path) {
            Ok((keys, stamp)) => {
                info!(path = %path.display(), keys = keys.len(), "JWKS changed; read again");
                jwks.keys = keys;
                jwks.stamp = Some(stamp);
            }
            Err(e) => {
                warn!(error = %e, "JWKS changed but cannot be used; keeping the keys read before")
            }
        }
    }
}

fn file_stamp(path: &Path) -> std::io::Result<(SystemTime, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified()?, meta.len()))
}

/// The RS256 and ES256 keys of a JWKS file; other keys are skipped.
fn read_jwks(path: &Path) -> Result<(Vec<PublicKey>, (SystemTime, u64)), String> {
    let shown = path.display();
    let stamp = file_stamp(path).map_err(|e| format!("cannot read jwt.jwks_file {shown}: {e}"))?;
    if stamp.1 > JWKS_BYTES_MAX {
        return Err(format!(
            "jwt.jwks_file {shown} is {} bytes, more than {JWKS_BYTES_MAX}",
            stamp.1
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read jwt.jwks_file {shown}: {e}"))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| format!("jwt.jwks_file {shown} is not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| {
            format!(
                "jwt.jwks_file {shown}: key {:?} cannot be used: {e}",
                jwk.common.key_id
            )
        })?;
        keys.push(PublicKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    if keys.is_empty() {
        return Err(format!("jwt.jwks_file {shown} holds no RS256 or ES256 key"));
    }
    Ok((keys, stamp))
}
