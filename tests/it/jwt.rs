//! JWT bearer tokens as an identity provider would issue them: RS256 and
//! ES256 from a JWKS file that rotates while the server runs, HS256 with a
//! shared secret, and every forged or stale token an attacker would try.

use crate::support::{TestServer, error_code};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "sluice";
const SECRET: &[u8] = b"an HS256 secret of forty bytes, at least";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Claims that pass, for `sub` with `role`, adjusted by `change`.
fn claims(sub: &str, role: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "role": role,
        "iat": now_s(), "exp": now_s() + 600,
    });
    change(&mut claims);
    claims
}

/// A token signed with `alg` by the fixture's private key `key` (or the
/// HS256 secret), its header naming `kid`.
fn sign(alg: Algorithm, key: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let encoding = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(key.as_bytes()),
        Algorithm::RS256 => {
            EncodingKey::from_rsa_pem(&std::fs::read(fixture(key)).expect("key")).expect("RSA key")
        }
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&std::fs::read(fixture(key)).expect("key")).expect("EC key")
        }
        other => panic!("no test key for {other:?}"),
    };
    encode(&header, claims, &encoding).expect("signed")
}

fn b64url(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

async fn call(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = s
        .http
        .request(method, format!("{}{path}", s.url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post(s: &TestServer, token: &str, body: Value) -> (u16, Value) {
    call(s, reqwest::Method::POST, "/v1/mutations", token, Some(body)).await
}

fn jwt_config(dir: &Path) -> sluice_server::config::Config {
    let jwks = dir.join("jwks.json");
    std::fs::copy(fixture("jwks.json"), &jwks).expect("copy JWKS");
    let secret = dir.join("hs256.secret");
    std::fs::write(&secret, [SECRET, b"\n"].concat()).expect("secret");
    let mut config = sluice_server::config::Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.join("data"),
        auth: "jwt".into(),
        ..Default::default()
    };
    config.jwt.issuer = ISSUER.into();
    config.jwt.audience = AUDIENCE.into();
    config.jwt.jwks_file = jwks.display().to_string();
    config.jwt.hs256_secret_file = secret.display().to_string();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_rotating_jwks_and_a_shared_secret_decide_who_calls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = jwt_config(dir.path());
    let jwks = PathBuf::from(&config.jwt.jwks_file);
    let s = TestServer::start_in(config, tempfile::tempdir().expect("temp dir")).await;
    let put = |id: &str| json!({"id": id, "collection": "notes", "key": "k", "op": "put", "value": {"by": id}});

    // Each algorithm, each with its own kind of key.
    let alice = sign(
        Algorithm::RS256,
        "rsa-1.pem",
        Some("rsa-1"),
        &claims("alice", "writer", |_| {}),
    );
    let (status, body) = post(&s, &alice, put("r1")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&s, reqwest::Method::GET, "/v1/mutations/r1", &alice, None).await;
    assert_eq!(
        (status, &body["version"]),
        (200, &json!(1)),
        "alice's answer is hers: {body}"
    );
    let bob = sign(
        Algorithm::ES256,
        "ec-1.pem",
        Some("ec-1"),
        &claims("bob", "reader", |_| {}),
    );
    let (status, body) = call(
        &s,
        reqwest::Method::GET,
        "/v1/documents/notes/k",
        &bob,
        None,
    )
    .await;
    assert_eq!((status, &body["item"]["by"]), (200, &json!("r1")), "{body}");
    let (status, body) = post(&s, &bob, put("b1")).await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "forbidden"),
        "a reader does not write"
    );
    let secret = std::str::from_utf8(SECRET).expect("ascii");
    let carol = sign(
        Algorithm::HS256,
        secret,
        None,
        &claims("carol", "writer", |_| {}),
    );
    let (status, body) = post(&s, &carol, put("c1")).await;
    assert_eq!(status, 200, "{body}");
    let mut forged = put("c2");
    forged["client"] = json!("alice");
    let (status, body) = post(&s, &carol, forged).await;
    assert_eq!((status, error_code(&body)), (403, "client_mismatch"));

    // Stale, early, foreign and forged tokens: each refused for what it is.
    let rsa = |change: fn(&mut Value)| {
        sign(
            Algorithm::RS256,
            "rsa-1.pem",
            Some("rsa-1"),
            &claims("mallory", "admin", change),
        )
    };
    let public_pem = std::fs::read_to_string(fixture("rsa-1.pub.pem")).expect("public key");
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims("mallory", "admin", |_| {}).to_string().as_bytes())
    );
    let cases = [
        (rsa(|c| c["exp"] = json!(now_s() - 3_600)), "token_expired"),
        (
            rsa(|c| c["nbf"] = json!(now_s() + 3_600)),
            "token_not_yet_valid",
        ),
        (
            rsa(|c| c["iss"] = json!("https://evil.test")),
            "token_wrong_issuer",
        ),
        (
            rsa(|c| c["aud"] = json!("another-api")),
            "token_wrong_audience",
        ),
        (
            rsa(|c| drop(c.as_object_mut().map(|o| o.remove("exp")))),
            "credential_invalid",
        ),
        (rsa(|c| c["role"] = json!("root")), "credential_invalid"),
        (
            rsa(|c| drop(c.as_object_mut().map(|o| o.remove("sub")))),
            "credential_invalid",
        ),
        // Signed by a key the JWKS does not hold, under a kid it does.
        (
            sign(
                Algorithm::RS256,
                "rsa-2.pem",
                Some("rsa-1"),
                &claims("mallory", "admin", |_| {}),
            ),
            "credential_invalid",
        ),
        // Algorithm confusion: the HMAC of the public key.
        (
            sign(
                Algorithm::HS256,
                &public_pem,
                Some("rsa-1"),
                &claims("mallory", "admin", |_| {}),
            ),
            "credential_invalid",
        ),
        (
            sign(
                Algorithm::HS256,
                "another secret of forty bytes or more...",
                None,
                &claims("mallory", "admin", |_| {}),
            ),
            "credential_invalid",
        ),
        (none, "credential_malformed"),
        ("eyJ.not.a-token".to_owned(), "credential_malformed"),
    ];
    for (token, code) in &cases {
        let (status, body) = post(&s, token, put("m1")).await;
        assert_eq!((status, error_code(&body)), (401, *code), "{token}: {body}");
    }
    let (status, body) = call(
        &s,
        reqwest::Method::GET,
        "/v1/documents/notes/k",
        &bob,
        None,
    )
    .await;
    assert_eq!(
        (status, &body["item"]["by"]),
        (200, &json!("c1")),
        "no forged write landed: {body}"
    );

    // The identity provider rotates its key: the new one is taken, the old
    // one refused, without a restart.
    std::fs::copy(fixture("jwks-rotated.json"), &jwks).expect("rotate");
    let dave = sign(
        Algorithm::RS256,
        "rsa-2.pem",
        Some("rsa-2"),
        &claims("dave", "writer", |_| {}),
    );
    let mut status = 0;
    for _ in 0..40 {
        status = post(&s, &dave, put("d1")).await.0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, 200,
        "the rotated key is used within the check interval"
    );
    let (status, body) = post(&s, &alice, put("r2")).await;
    assert_eq!(
        (status, error_code(&body)),
        (401, "credential_invalid"),
        "the retired key is not"
    );
    // A broken file keeps the keys that work.
    std::fs::write(&jwks, "{ not json").expect("break");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (status, _) = post(&s, &dave, put("d2")).await;
    assert_eq!(status, 200, "a JWKS that does not parse changes nothing");
    s.stop().await;
}

#[tokio::test]
async fn a_server_with_unusable_token_keys_does_not_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shutdown = || async {};
    let mut missing = jwt_config(dir.path());
    missing.jwt.jwks_file = dir.path().join("nope.json").display().to_string();
    let short = dir.path().join("short.secret");
    std::fs::write(&short, "too short").expect("write");
    let mut weak = jwt_config(dir.path());
    weak.jwt.hs256_secret_file = short.display().to_string();
    let mut unnamed = jwt_config(dir.path());
    unnamed.jwt.issuer.clear();
    for (config, says) in [
        (missing, "cannot read jwt.jwks_file"),
        (weak, "needs at least 32"),
        (unnamed, "needs jwt.issuer"),
    ] {
        let refused = match sluice_server::server::start(config, shutdown()).await {
            Ok(_) => panic!("started with {says}"),
            Err(e) => e.to_string(),
        };
        assert!(refused.contains(says), "{refused}");
    }
}
