//! Authentication and roles as a user meets them: keys made and revoked by
//! `sluice keys` while the server runs, a 401 that names the kind of
//! failure, the credential deciding the client, and each role kept to what
//! it may do.

use crate::support::{TestServer, error_code};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs `sluice keys …` on the data directory; its standard output, or a
/// panic with its error.
fn keys(data: &Path, args: &[&str]) -> String {
    let out = keys_run(data, args);
    assert!(
        out.status.success(),
        "sluice keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn keys_run(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("keys")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("SLUICE_STORE")
        .env_remove("SLUICE_DATA_DIR")
        .output()
        .expect("run sluice keys")
}

/// Makes a key; the key is the last line of the output.
fn create(data: &Path, client: &str, role: &str) -> String {
    let out = keys(data, &["create", "--client", client, "--role", role]);
    out.lines().last().expect("a last line").to_owned()
}

/// One request with an optional `Authorization` header value: status,
/// headers, and the body as JSON (`Null` when it is not JSON).
async fn call(
    s: &TestServer,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = s.http.request(method, format!("{}{path}", s.url));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_by_the_cli_decide_who_calls_and_what_they_may_do() {
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().to_path_buf();
    let config = sluice_server::config::Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.clone(),
        auth: "keys".into(),
        ..Default::default()
    };
    let s = TestServer::start_in(config, data).await;
    // Made while the server runs, on its store.
    let alice = bearer(&create(&dir, "alice", "writer"));
    let bob = bearer(&create(&dir, "bob", "writer"));
    let carol = bearer(&create(&dir, "carol", "reader"));
    let root = bearer(&create(&dir, "root", "admin"));

    // Who is calling: missing, malformed, unknown — each said, nothing more.
    let put =
        json!({"id": "a1", "collection": "notes", "key": "k", "op": "put", "value": {"n": 1}});
    let (status, headers, body) =
        call(&s, Method::POST, "/v1/mutations", None, Some(put.clone())).await;
    assert_eq!((status, error_code(&body)), (401, "credential_missing"));
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"sluice\"");
    for (header, code) in [
        ("Basic YWxpY2U6eA==", "credential_malformed"),
        ("Bearer not-a-key", "credential_malformed"),
        (
            "Bearer sluice_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000",
            "credential_invalid",
        ),
    ] {
        let (status, headers, body) = call(
            &s,
            Method::POST,
            "/v1/mutations",
            Some(header),
            Some(put.clone()),
        )
        .await;
        assert_eq!((status, error_code(&body)), (401, code), "{header}");
        let challenge = headers["www-authenticate"].to_str().expect("ascii");
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    }
    let (status, _, _) = call(&s, Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200, "health is public");
    let (status, _, _) = call(&s, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200, "so is the API's description");

    // The credential is the client: a body without one is alice's; a body
    // naming bob is refused and applies nothing.
    let (status, _, body) = call(
        &s,
        Method::POST,
        "/v1/mutations",
        Some(&alice),
        Some(put.clone()),
    )
    .await;
    assert_eq!((status, &body["version"]), (200, &json!(1)), "{body}");
    let forged = json!({"id": "a2", "client": "bob", "collection": "notes", "key": "k", "op": "put", "value": {"n": 666}});
    let (status, _, body) = call(
        &s,
        Method::POST,
        "/v1/mutations",
        Some(&alice),
        Some(forged.clone()),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "client_mismatch"),
        "{body}"
    );
    let batch = json!({"mutations": [
        {"id": "a3", "collection": "notes", "key": "other", "op": "put", "value": {"n": 1}},
        forged,
    ]});
    let (status, _, body) = call(
        &s,
        Method::POST,
        "/v1/mutations:batch",
        Some(&alice),
        Some(batch),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "client_mismatch"),
        "{body}"
    );
    let (_, _, doc) = call(&s, Method::GET, "/v1/documents/notes/k", Some(&carol), None).await;
    assert_eq!(
        (&doc["version"], &doc["item"]["n"]),
        (&json!(1), &json!(1)),
        "{doc}"
    );
    let (status, _, _) = call(
        &s,
        Method::GET,
        "/v1/documents/notes/other",
        Some(&carol),
        None,
    )
    .await;
    assert_eq!(status, 404, "nothing of the refused batch was applied");

    // Answers are their client's own.
    let (status, _, body) = call(&s, Method::GET, "/v1/mutations/a1", Some(&alice), None).await;
    assert_eq!((status, &body["version"]), (200, &json!(1)), "{body}");
    let (status, _, body) = call(
        &s,
        Method::GET,
        "/v1/mutations/a1?client=alice",
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "client_mismatch"),
        "{body}"
    );
    let (status, _, _) = call(&s, Method::GET, "/v1/mutations/a1", Some(&bob), None).await;
    assert_eq!(status, 404, "bob has no mutation a1");
    for path in ["/v1/events?client=alice", "/v1/mutations?client=alice"] {
        let (status, _, body) = call(&s, Method::GET, path, Some(&bob), None).await;
        assert_eq!(
            (status, error_code(&body)),
            (403, "client_mismatch"),
            "{path}"
        );
    }
    let (status, _, body) = call(
        &s,
        Method::GET,
        "/v1/mutations/a1?client=alice",
        Some(&root),
        None,
    )
    .await;
    assert_eq!(
        (status, &body["version"]),
        (200, &json!(1)),
        "an admin reads anyone's"
    );

    // Roles: a reader reads documents only; configuration, statistics and
    // metrics are an admin's.
    let (status, _, body) = call(
        &s,
        Method::POST,
        "/v1/mutations",
        Some(&carol),
        Some(put.clone()),
    )
    .await;
    assert_eq!((status, error_code(&body)), (403, "forbidden"), "{body}");
    let script = json!({"handler": {"type": "script", "source": "function resolve(c) { return {action: 'resolve', item: {pwned: true}}; }"}});
    for who in [&alice, &carol] {
        let (status, _, body) = call(
            &s,
            Method::PUT,
            "/v1/collections/priv",
            Some(who),
            Some(script.clone()),
        )
        .await;
        assert_eq!((status, error_code(&body)), (403, "forbidden"), "{body}");
        for path in [
            "/v1/stats",
            "/v1/model",
            "/metrics",
            "/v1/conflicts",
            "/v1/quarantine",
        ] {
            let (status, _, _) = call(&s, Method::GET, path, Some(who), None).await;
            assert_eq!(status, 403, "{path}");
        }
    }
    let (status, _, body) = call(&s, Method::GET, "/v1/collections/priv", Some(&root), None).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(
        body["handler"]["type"], "script",
        "no refused change took effect"
    );
    for path in ["/v1/stats", "/v1/model", "/metrics"] {
        let (status, _, _) = call(&s, Method::GET, path, Some(&root), None).await;
        assert_eq!(status, 200, "{path}");
    }

    // Revoked while the server runs: refused within the cache's second.
    let id = keys(&dir, &["list"])
        .lines()
        .find(|l| l.ends_with(" alice"))
        .and_then(|l| l.split_whitespace().next())
        .expect("alice's key is listed")
        .to_owned();
    assert!(keys(&dir, &["revoke", &id]).contains(&id));
    let mut refused = None;
    for _ in 0..40 {
        let (status, _, body) = call(&s, Method::GET, "/v1/mutations/a1", Some(&alice), None).await;
        if status == 401 {
            refused = Some(error_code(&body).to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused.as_deref(), Some("credential_revoked"));
    let (status, _, _) = call(
        &s,
        Method::GET,
        "/v1/mutations/a1?client=alice",
        Some(&root),
        None,
    )
    .await;
    assert_eq!(status, 200, "the others still work");

    // The listing shows no secret, and says what was revoked.
    let list = keys(&dir, &["list"]);
    assert_eq!(list.lines().count(), 5, "{list}");
    let alice_line = list.lines().find(|l| l.ends_with(" alice")).expect("alice");
    assert!(
        alice_line.contains("Z  ") && !alice_line.contains(" - "),
        "{alice_line}"
    );
    for key in [&bob, &carol, &root] {
        let secret = key.rsplit('_').next().expect("secret");
        assert!(!list.contains(secret), "a secret is never shown again");
    }
    s.stop().await;
}

#[test]
fn the_keys_command_says_what_is_wrong() {
    let data = tempfile::tempdir().expect("temp dir");
    for (args, says) in [
        (vec!["create", "--client", "a", "--role", "root"], "root"),
        (
            vec!["create", "--client", "", "--role", "admin"],
            "--client must be 1 to 128",
        ),
        (vec!["revoke", "zzz"], "neither a key id"),
        (
            vec!["revoke", "0123456789abcdef"],
            "no key with id 0123456789abcdef",
        ),
        (
            vec!["list", "--store", "memory"],
            "memory store holds no keys",
        ),
    ] {
        let out = keys_run(data.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // A key revoked twice: the second time is an error too.
    let key = create(data.path(), "dave", "reader");
    assert!(keys_run(data.path(), &["revoke", &key]).status.success());
    assert!(!keys_run(data.path(), &["revoke", &key]).status.success());
}
