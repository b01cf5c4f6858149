//! Own-write chaining (`chain_own_writes`): a base stale only because of the
//! same client's earlier writes applies as if current; anything else —
//! another client's write in between, a version nobody recorded — takes the
//! conflict path. What a client wrote is remembered across a restart.

use crate::openapi::{conforms, description};
use crate::support::TestServer;
use serde_json::{Value, json};

fn patch(id: &str, client: &str, base: u64, value: Value) -> Value {
    json!({"id": id, "client": client, "collection": "notes", "key": "n", "op": "patch",
           "value": value, "base_version": base})
}

async fn chaining_server() -> TestServer {
    let s = TestServer::embedded().await;
    let (status, _) = s
        .put(
            "/v1/collections/notes",
            json!({"handler": "automerge", "chain_own_writes": true}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .post(
            json!({"id": "seed", "client": "ann", "collection": "notes", "key": "n",
                     "op": "put", "value": {"title": "t", "body": "b"}}),
        )
        .await;
    assert_eq!(status, 200);
    s
}

/// amplify-js #6363: two quick edits sent with the same base. Under plain
/// automerge the server's scalar wins and the second edit is lost; chained,
/// it applies.
#[tokio::test]
async fn two_quick_edits_with_one_base_both_apply() {
    let s = chaining_server().await;
    let (status, first) = s.post(patch("e1", "ann", 1, json!({"title": "one"}))).await;
    assert_eq!(
        (status, &first["outcome"]),
        (200, &json!("applied")),
        "{first}"
    );
    assert!(first.get("chained_from").is_none(), "{first}");
    let (status, second) = s.post(patch("e2", "ann", 1, json!({"title": "two"}))).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["outcome"], json!("applied"), "{second}");
    assert_eq!(second["chained_from"], json!(1));
    assert_eq!(second["conflict"], Value::Null);
    assert_eq!(second["version"], json!(3));
    assert_eq!(
        second["item"]["title"],
        json!("two"),
        "the second edit landed"
    );
    conforms(
        &description(&s).await,
        "post",
        "/v1/mutations",
        200,
        &second,
    );

    // The same edits on a collection without chaining: a conflict, and
    // automerge keeps the server's scalar.
    s.put("/v1/collections/plain", json!({"handler": "automerge"}))
        .await;
    for (id, base, title) in [
        ("p0", None, "t"),
        ("p1", Some(1), "one"),
        ("p2", Some(1), "two"),
    ] {
        let mut m = json!({"id": id, "client": "ann", "collection": "plain", "key": "n",
                           "op": "patch", "value": {"title": title}});
        if let Some(base) = base {
            m["base_version"] = json!(base);
        }
        s.post(m).await;
    }
    let (_, plain) = s.get("/v1/documents/plain/n").await;
    assert_eq!(plain["item"]["title"], json!("one"), "{plain}");
}

#[tokio::test]
async fn another_clients_write_in_between_is_a_conflict() {
    let s = chaining_server().await;
    s.put(
        "/v1/collections/notes",
        json!({"handler": "optimistic", "chain_own_writes": true}),
    )
    .await;
    let (status, _) = s.post(patch("a1", "ann", 1, json!({"title": "ann"}))).await;
    assert_eq!(status, 200);
    let (status, _) = s.post(patch("b1", "bob", 2, json!({"body": "bob"}))).await;
    assert_eq!(status, 200);
    // Version 2 is ann's, 3 is bob's: her base 1 is stale because of bob.
    let (status, answer) = s
        .post(patch("a2", "ann", 1, json!({"title": "again"})))
        .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["outcome"], json!("rejected"));
    assert!(answer.get("chained_from").is_none(), "{answer}");
    // Based on bob's version, her next edit is simply current.
    let (status, answer) = s
        .post(patch("a3", "ann", 3, json!({"title": "again"})))
        .await;
    assert_eq!((status, answer["version"].clone()), (200, json!(4)));
    // And chaining resumes from there: 4 is hers.
    let (status, answer) = s.post(patch("a4", "ann", 3, json!({"body": "hers"}))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["chained_from"], json!(3));
}

/// After a restart the process remembers nothing; the history says who
/// wrote each version.
#[tokio::test]
async fn chaining_survives_a_restart() {
    let s = chaining_server().await;
    let (status, _) = s.post(patch("r1", "ann", 1, json!({"title": "one"}))).await;
    assert_eq!(status, 200);
    let s = s.restart(|_| {}).await;
    let (status, answer) = s.post(patch("r2", "ann", 1, json!({"body": "two"}))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["chained_from"], json!(1));
    assert_eq!(answer["item"], json!({"title": "one", "body": "two"}));
    // bob's base 1 is stale because of ann: a conflict, merged by automerge.
    let (status, answer) = s.post(patch("r3", "bob", 1, json!({"title": "bob"}))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], json!("merged"));
    assert!(answer.get("chained_from").is_none());
}
