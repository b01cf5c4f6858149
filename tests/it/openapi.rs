//! `/openapi.json`: a valid OpenAPI 3.1 description (checked by
//! openapi-spec-validator, which `scripts/test` installs), listing every route
//! the server has and the README documents, whose schemas the real answers
//! satisfy.

use crate::support::{TestServer, error_code};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

pub(crate) async fn description(s: &TestServer) -> Value {
    let (status, spec) = s.get("/openapi.json").await;
    assert_eq!(status, 200);
    spec
}

/// `(METHOD, /path)` of every operation of the description.
fn operations(spec: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// schemathesis (which `scripts/test` installs) against a fresh server:
/// requests valid under the description, the server accepting every one
/// (`positive_data_acceptance`), answering no 5xx, and only with described
/// statuses, content types and bodies. It found `limit` described from 0
/// while the server wants 1 to 1,000, collections without their pattern,
/// a put without its value, an empty script, `3.0` refused where the
/// description says `integer`, and event streams described as strings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_the_description_and_the_server_disagree_on() {
    let s = TestServer::embedded().await;
    schemathesis(&s, &[], 30).await;
}

/// The same with authentication on, as an admin would call (the roles'
/// refusals, 403, are described on every route that has them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_with_credentials_finds_nothing_either() {
    let data = tempfile::tempdir().expect("temp dir");
    let dir = data.path().to_path_buf();
    let config = sluice_server::config::Config {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.clone(),
        auth: "keys".into(),
        ..Default::default()
    };
    let s = TestServer::start_in(config, data).await;
    let admin = crate::auth::create(&dir, "root", "admin");
    let header = format!("Authorization: Bearer {admin}");
    schemathesis(&s, &["-H", &header], 15).await;
    // Every answer would be a described 401 without the credential: the
    // run reached the engine only if it was sent.
    let stats: serde_json::Value = s
        .http
        .get(format!("{}/v1/stats", s.url))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert!(
        stats["mutations_decided"].as_u64().unwrap_or(0) > 0,
        "no mutation was decided: {stats}"
    );
}

/// Runs schemathesis against `s` with `extra` arguments and up to
/// `examples` cases per operation, and fails on anything it finds.
async fn schemathesis(s: &TestServer, extra: &[&str], examples: u32) {
    let schemathesis = std::env::var("SLUICE_TEST_SCHEMATHESIS").expect(
        "SLUICE_TEST_SCHEMATHESIS is not set: run the suite with ./scripts/test, which installs schemathesis",
    );
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/schemathesis.toml");
    let reports = tempfile::tempdir().expect("temp dir");
    let url = format!("{}/openapi.json", s.url);
    let mut command = std::process::Command::new(&schemathesis);
    command
        .args(["--config-file", config, "run", &url])
        .args(extra)
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,positive_data_acceptance",
            "--seed",
            "1",
            "--max-examples",
            &examples.to_string(),
            "--workers",
            "1",
            "--no-color",
            "--generation-database",
            "none",
            "--report-dir",
        ])
        .arg(reports.path());
    let run = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("task")
        .expect("run schemathesis");
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "schemathesis found failures:\n{out}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.contains(" passed"), "{out}");
    assert!(!out.contains("failures"), "{out}");
}

#[tokio::test]
async fn the_description_is_valid_openapi_3_1() {
    let validator = std::env::var("SLUICE_TEST_OPENAPI_VALIDATOR").expect(
        "SLUICE_TEST_OPENAPI_VALIDATOR is not set: run the suite with ./scripts/test, which installs openapi-spec-validator",
    );
    let s = TestServer::embedded().await;
    let spec = description(&s).await;
    assert_eq!(spec["openapi"], "3.1.0");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&spec).expect("json")).expect("write");
    let out = std::process::Command::new(&validator)
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the description:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every operation documents its answers, errors included.
    for (method, path) in operations(&spec) {
        let op = &spec["paths"][&path][method.to_lowercase()];
        let responses = op["responses"].as_object().expect("responses");
        assert!(responses.contains_key("200"), "{method} {path}");
        assert!(responses.contains_key("500"), "{method} {path}");
        // An operation that takes input says how it refuses bad input.
        if op.get("requestBody").is_some() {
            assert!(responses.contains_key("400"), "{method} {path}");
        }
        assert!(
            op["summary"].is_string() || op["description"].is_string(),
            "{method} {path}"
        );
    }
}

/// Every operation of the description is served (not the router's 404 or
/// 405), and the README's API table lists exactly these operations.
#[tokio::test]
async fn the_description_lists_every_route_the_server_and_the_readme_have() {
    let s = TestServer::embedded().await;
    let spec = description(&s).await;
    let ops = operations(&spec);
    for (method, path) in &ops {
        let concrete = path
            .replace("{collection}", "notes")
            .replace("{key}", "a/b")
            .replace("{name}", "notes")
            .replace("{id}", "m1");
        let request = s.http.request(
            method.parse().expect("method"),
            format!("{}{concrete}", s.url),
        );
        let request = if method == "GET" {
            request
        } else {
            request.json(&json!({}))
        };
        let response = request.send().await.expect("send");
        let status = response.status().as_u16();
        if response
            .headers()
            .get("content-type")
            .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"))
        {
            assert_eq!(status, 200);
            continue;
        }
        let text = response.text().await.expect("body");
        if let Ok(body) = serde_json::from_str::<Value>(&text)
            && body.get("error").is_some()
        {
            let code = error_code(&body);
            assert!(
                code != "method_not_allowed" && !(code == "not_found" && text.contains("no route")),
                "{method} {path} is described but not served: {status} {text}"
            );
        }
        assert_ne!(status, 405, "{method} {path}");
    }

    // The README's API table: its first cell names the methods and the path.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let table = readme
        .split("\n## ")
        .find(|section| section.starts_with("The API"))
        .expect("an API section in the README");
    let mut documented = BTreeSet::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cell = line.split('|').nth(1).expect("a first cell");
        let path = cell
            .split(['`', ' ', ','])
            .find(|w| w.starts_with('/'))
            .expect("a path")
            .split('?')
            .next()
            .expect("a path")
            .to_owned();
        for method in METHODS {
            let upper = method.to_uppercase();
            if cell.contains(&format!("`{upper}")) || cell.contains(&format!("{upper} ")) {
                documented.insert((upper, path.clone()));
            }
        }
    }
    assert_eq!(
        documented, ops,
        "the README's API table and /openapi.json disagree"
    );
}

/// A small JSON Schema check, enough for what utoipa emits: `$ref`, `oneOf`,
/// `allOf`, `type` (one or several), `enum`, `required`, `properties` and
/// `items`. Objects with `properties` are closed: a field the description
/// does not name is drift.
fn check(
    spec: &Value,
    schema: &Value,
    value: &Value,
    at: &str,
    closed: bool,
) -> Result<(), String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .ok_or_else(|| format!("{at}: unexpected $ref {reference}"))?;
        let target = &spec["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: $ref to a missing schema {name}"));
        }
        return check(spec, target, value, at, closed);
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let errors: Vec<String> = options
            .iter()
            .filter_map(|o| check(spec, o, value, at, closed).err())
            .collect();
        if errors.len() == options.len() {
            return Err(format!("{at}: matches none of oneOf: {errors:?}"));
        }
        return Ok(());
    }
    if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
        for part in parts {
            check(spec, part, value, at, false)?;
        }
        // Closed over the union of the parts' properties.
        let mut known = BTreeSet::new();
        for part in parts {
            let part = match part.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    &spec["components"]["schemas"][r.trim_start_matches("#/components/schemas/")]
                }
                None => part,
            };
            if let Some(props) = part.get("properties").and_then(Value::as_object) {
                known.extend(props.keys().cloned());
            }
        }
        if let Some(unknown) = value
            .as_object()
            .and_then(|object| object.keys().find(|k| !known.contains(*k)))
        {
            return Err(format!("{at}: field {unknown:?} is not described"));
        }
        return Ok(());
    }
    if let Some(kinds) = schema.get("type") {
        let kinds: Vec<&str> = match kinds {
            Value::String(k) => vec![k.as_str()],
            Value::Array(ks) => ks.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let fits = kinds.iter().any(|k| match *k {
            "null" => value.is_null(),
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            _ => false,
        });
        if !fits {
            return Err(format!("{at}: {value} is not of type {kinds:?}"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Some(object) = value.as_object() {
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(required) {
                return Err(format!("{at}: required field {required:?} is missing"));
            }
        }
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (field, v) in object {
                match properties.get(field) {
                    Some(s) => check(spec, s, v, &format!("{at}.{field}"), true)?,
                    None if closed => {
                        return Err(format!("{at}: field {field:?} is not described"));
                    }
                    None => {}
                }
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, v) in array.iter().enumerate() {
            check(spec, items, v, &format!("{at}[{i}]"), true)?;
        }
    }
    Ok(())
}

/// Checks an answer against the schema the description gives for its status.
pub(crate) fn conforms(spec: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let response = &spec["paths"][path][method]["responses"][status.to_string()];
    assert!(
        !response.is_null(),
        "{method} {path} answered {status}, which the description does not list"
    );
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} {status}: no JSON schema"
    );
    if let Err(e) = check(spec, schema, body, "$", true) {
        panic!("{method} {path} {status} does not match its description: {e}\n{body}");
    }
}

/// Real answers satisfy the schemas the description gives them, so the
/// hand-rendered answers and their documented shapes cannot drift apart.
#[tokio::test]
async fn real_answers_match_their_described_schemas() {
    let s = TestServer::embedded().await;
    let spec = description(&s).await;
    let (status, body) = s
        .put(
            "/v1/collections/notes",
            json!({"handler": "automerge", "set_fields": ["tags"]}),
        )
        .await;
    conforms(&spec, "put", "/v1/collections/{name}", status, &body);
    let (status, body) = s.get("/v1/collections/notes").await;
    conforms(&spec, "get", "/v1/collections/{name}", status, &body);
    let (status, body) = s
        .put(
            "/v1/collections/hooked",
            json!({"handler": {"webhook": {"url": "http://127.0.0.1:9/x", "timeout_ms": 100}}}),
        )
        .await;
    conforms(&spec, "put", "/v1/collections/{name}", status, &body);
    let (status, body) = s
        .put("/v1/collections/bad", json!({"handler": "nope"}))
        .await;
    assert_eq!(status, 400);
    conforms(&spec, "put", "/v1/collections/{name}", status, &body);

    let post = |body: Value| s.post(body);
    let (status, body) = post(json!({"id": "m1", "client": "ann", "collection": "notes", "key": "a/b", "op": "put", "value": {"tags": ["x"]}})).await;
    assert_eq!(status, 200);
    conforms(&spec, "post", "/v1/mutations", status, &body);
    let (status, body) = post(json!({"id": "m2", "client": "ann", "collection": "notes", "key": "a/b", "op": "patch", "value": {"tags": ["y"]}, "base_version": 0})).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("merged")));
    conforms(&spec, "post", "/v1/mutations", status, &body);
    let (status, body) =
        post(json!({"collection": "plain", "key": "k", "op": "put", "value": {}})).await;
    conforms(&spec, "post", "/v1/mutations", status, &body);
    let (status, body) = post(
        json!({"collection": "plain", "key": "k", "op": "put", "value": {}, "base_version": 0}),
    )
    .await;
    assert_eq!(status, 409);
    conforms(&spec, "post", "/v1/mutations", status, &body);
    let (status, body) = post(json!({"collection": "plain", "key": "never", "op": "delete"})).await;
    assert_eq!(status, 404);
    conforms(&spec, "post", "/v1/mutations", status, &body);
    let (status, body) = post(json!({"collection": "plain", "key": "k", "op": "upsert"})).await;
    assert_eq!(status, 400);
    conforms(&spec, "post", "/v1/mutations", status, &body);
    let (status, body) = post(
        json!({"id": "m1", "client": "ann", "collection": "notes", "key": "a/b", "op": "delete"}),
    )
    .await;
    assert_eq!(status, 422);
    conforms(&spec, "post", "/v1/mutations", status, &body);
    let (status, body) = s
        .post_raw(
            "/v1/mutations?wait=false",
            json!({"id": "q1", "client": "ann", "collection": "notes", "key": "q", "op": "put", "value": {}}).to_string(),
        )
        .await;
    assert_eq!(status, 202);
    conforms(&spec, "post", "/v1/mutations", status, &body);

    let (status, body) = s
        .post_raw(
            "/v1/mutations:batch",
            json!({"mutations": [
                {"collection": "plain", "key": "b", "op": "put", "value": {"n": 1}},
                {"collection": "plain", "key": "none", "op": "delete"},
            ]})
            .to_string(),
        )
        .await;
    assert_eq!(status, 200);
    conforms(&spec, "post", "/v1/mutations:batch", status, &body);
    let (status, body) = s
        .post_raw("/v1/mutations:batch", json!({"mutations": []}).to_string())
        .await;
    conforms(&spec, "post", "/v1/mutations:batch", status, &body);

    let (status, body) = s.get("/v1/mutations/m2?client=ann").await;
    conforms(&spec, "get", "/v1/mutations/{id}", status, &body);
    let (status, body) = s.get("/v1/mutations/nope?client=ann").await;
    assert_eq!(status, 404);
    conforms(&spec, "get", "/v1/mutations/{id}", status, &body);

    let (status, body) = s.get("/v1/documents/notes/a/b").await;
    assert_eq!(status, 200);
    conforms(
        &spec,
        "get",
        "/v1/documents/{collection}/{key}",
        status,
        &body,
    );
    let (status, body) = s.get("/v1/documents/notes/missing").await;
    conforms(
        &spec,
        "get",
        "/v1/documents/{collection}/{key}",
        status,
        &body,
    );

    let (status, body) = s.get("/v1/conflicts?limit=10").await;
    assert_eq!(body["conflicts"].as_array().map(Vec::len), Some(2));
    conforms(&spec, "get", "/v1/conflicts", status, &body);
    let (status, body) = s.get("/v1/conflicts?limit=0").await;
    conforms(&spec, "get", "/v1/conflicts", status, &body);
    for path in ["/v1/stats", "/v1/model", "/healthz"] {
        let (status, body) = s.get(path).await;
        conforms(&spec, "get", path, status, &body);
    }
    // The dashboard's snapshot once a second of the series has closed.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let (status, body) = s.get("/v1/dashboard").await;
    assert!(!body["series"].as_array().expect("series").is_empty());
    assert!(!body["conflicts"].as_array().expect("conflicts").is_empty());
    conforms(&spec, "get", "/v1/dashboard", status, &body);
}
