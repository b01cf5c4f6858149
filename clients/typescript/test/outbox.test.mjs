// The client against a real Sluice server: offline then online, a crash of
// the client mid-flush, the server restarting mid-flush, back-off when
// told, and refusals that settle instead of looping.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { appendFile, mkdir } from "node:fs/promises";
import { createServer } from "node:http";
import * as path from "node:path";
import { after, before, test } from "node:test";
import { Sluice } from "../dist/index.js";
import { Server, freePort, sluiceBin, tempDir } from "./server.mjs";

const WORKER = path.join(import.meta.dirname, "worker.mjs");
let server;

before(async () => {
  server = await Server.start();
});

after(async () => {
  await server?.down();
});

/** Runs a worker to its end (or until `stopWhen` sees a line, then kill -9). */
function worker(args, stopWhen) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WORKER, ...args.map(String)], { stdio: ["ignore", "pipe", "pipe"] });
    const lines = [];
    let err = "";
    let buffered = "";
    child.stdout.on("data", (d) => {
      buffered += d;
      const parts = buffered.split("\n");
      buffered = parts.pop();
      for (const line of parts) {
        lines.push(line);
        if (stopWhen?.(lines)) child.kill("SIGKILL");
      }
    });
    child.stderr.on("data", (d) => (err += d));
    child.once("error", reject);
    child.once("exit", (code, signal) => resolve({ code, signal, lines, err }));
  });
}

async function automerge(collection) {
  const r = await server.json("PUT", `/v1/collections/${collection}`, { handler: "automerge" });
  assert.ok(r.status < 300, JSON.stringify(r));
}

async function doc(collection, key) {
  const r = await server.json("GET", `/v1/documents/${collection}/${key}`);
  assert.equal(r.status, 200, JSON.stringify(r));
  return r.body;
}

/** Fields e<first>..e<first+n-1> all present, with their own numbers. */
function assertEdits(item, first, n) {
  for (let i = first; i < first + n; i++) assert.equal(item[`e${i}`], i, `edit ${i} in ${JSON.stringify(item)}`);
}

test("queued offline, delivered by the next process exactly once and in order; a stale edit meanwhile is merged", async () => {
  const collection = "offline";
  await automerge(collection);
  assert.equal((await server.json("POST", "/v1/mutations", { id: "seed", client: "setup", collection, key: "note", op: "put", value: { title: "t" } })).status, 200);
  const outbox = await tempDir("alice");
  const bob = await Sluice.open({ url: server.url, client: "bob", outbox: await tempDir("bob") });
  const seenByBob = await bob.get(collection, "note");
  assert.equal(seenByBob.version, 1);

  await server.down();
  const queued = await worker(["queue", server.url, outbox, "alice", collection, "note", 20, 1]);
  assert.equal(queued.code, 0, queued.err);
  assert.equal(queued.lines.filter((l) => l.startsWith("queued ")).length, 20);
  await server.up();

  const done = await worker(["flush", server.url, outbox, "alice", collection, "note", 0, 0]);
  assert.equal(done.code, 0, done.err);
  assert.equal(done.lines[0], "pending 20");
  assert.equal(done.lines.filter((l) => l.startsWith("settled ")).length, 20);
  // Bob edits from what he saw (version 1), stale by Alice's 20.
  const bobId = await bob.mutate({ collection, key: "note", op: "patch", value: { bob: true } });
  const bobAnswer = await bob.settled(bobId);
  assert.equal(bobAnswer.outcome, "merged", JSON.stringify(bobAnswer));
  await bob.close();

  const now = await doc(collection, "note");
  assertEdits(now.item, 1, 20);
  assert.equal(now.item.last, 20, "the last edit is the last applied");
  assert.equal(now.item.bob, true);
  // The seed, Alice's 20 (each once), Bob's one.
  assert.equal(now.version, 22);
});

test("a client killed with -9 mid-flush loses and doubles nothing", async () => {
  const collection = "killed";
  const outbox = await tempDir("carol");
  const run = await worker(["both", server.url, outbox, "carol", collection, "k", 40, 1], (lines) =>
    lines.filter((l) => l.startsWith("settled ")).length >= 5,
  );
  assert.equal(run.signal, "SIGKILL", `the worker ended before it was killed: ${run.lines.join("\n")} ${run.err}`);
  const rest = await worker(["flush", server.url, outbox, "carol", collection, "k", 0, 0]);
  assert.equal(rest.code, 0, rest.err);
  const pending = Number(rest.lines[0].split(" ")[1]);
  assert.ok(pending > 0 && pending <= 35, rest.lines[0]);
  const now = await doc(collection, "k");
  assertEdits(now.item, 1, 40);
  assert.equal(now.item.last, 40);
  assert.equal(now.version, 40, "each of the 40 applied exactly once");
});

test("the server restarting mid-flush loses and doubles nothing", async () => {
  const collection = "restarted";
  const s = await Sluice.open({ url: server.url, client: "dave", outbox: await tempDir("dave"), backoffMinMs: 20, backoffMaxMs: 300 });
  const ids = [];
  for (let i = 1; i <= 30; i++) ids.push(await s.mutate({ collection, key: "k", op: "patch", value: { [`e${i}`]: i, last: i } }));
  await s.settled(ids[4]);
  await server.down("SIGKILL");
  await new Promise((r) => setTimeout(r, 300));
  await server.up();
  await s.flush();
  assert.equal(s.pending().length, 0);
  const answers = await Promise.all(ids.map((id) => s.settled(id)));
  assert.ok(answers.every((a) => a.outcome === "applied"), JSON.stringify(answers.filter((a) => a.outcome !== "applied")));
  await s.close();
  const now = await doc(collection, "k");
  assertEdits(now.item, 1, 30);
  assert.equal(now.item.last, 30);
  assert.equal(now.version, 30);
});

test("a 429 is resent no sooner than its Retry-After", async () => {
  // A relay in front of the real server that answers the first POST 429.
  const posts = [];
  const relay = createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks);
    if (req.method === "POST") {
      posts.push(Date.now());
      if (posts.length === 1) {
        res.writeHead(429, { "content-type": "application/json", "retry-after": "1" });
        res.end(JSON.stringify({ error: { code: "overloaded", message: "retry after 1 s" } }));
        return;
      }
    }
    const upstream = await fetch(`${server.url}${req.url}`, { method: req.method, headers: { "content-type": "application/json" }, body: req.method === "POST" ? body : undefined });
    res.writeHead(upstream.status, { "content-type": "application/json" });
    res.end(Buffer.from(await upstream.arrayBuffer()));
  });
  const port = await freePort();
  await new Promise((r) => relay.listen(port, "127.0.0.1", r));
  try {
    const s = await Sluice.open({ url: `http://127.0.0.1:${port}`, client: "erin", outbox: await tempDir("erin"), backoffMinMs: 10, backoffMaxMs: 100 });
    const id = await s.mutate({ collection: "told", key: "k", op: "put", value: { a: 1 } });
    const answer = await s.settled(id);
    await s.close();
    assert.equal(answer.outcome, "applied");
    assert.equal(posts.length, 2);
    assert.ok(posts[1] - posts[0] >= 1000, `resent after ${posts[1] - posts[0]} ms`);
  } finally {
    relay.close();
  }
});

test("a 422 and a 400 settle with their error instead of being resent for ever", async () => {
  const collection = "refused";
  // Another device already used this id for another mutation.
  assert.equal((await server.json("POST", "/v1/mutations", { id: "dup-1", client: "frank", collection, key: "k", op: "put", value: { a: 1 } })).status, 200);
  const outbox = await tempDir("frank");
  await mkdir(outbox, { recursive: true });
  const m = { id: "dup-1", collection, key: "k", op: "put", value: { a: 2 }, atMs: Date.now() };
  await appendFile(path.join(outbox, "outbox.log"), JSON.stringify({ t: "queued", m }) + "\n");
  const s = await Sluice.open({ url: server.url, client: "frank", outbox });
  assert.deepEqual(s.pending().map((p) => p.id), ["dup-1"]);
  const reused = await s.settled("dup-1");
  assert.equal(reused.status, 422);
  assert.equal(reused.error.code, "idempotency_key_reused");
  const bad = await s.mutate({ collection: "not a collection!", key: "k", op: "put", value: {} });
  const refused = await s.settled(bad);
  assert.equal(refused.status, 400);
  await s.flush();
  assert.equal(s.pending().length, 0);
  await s.close();
  // Settled answers survive a restart of the client.
  const again = await Sluice.open({ url: server.url, client: "frank", outbox });
  assert.equal((await again.settled(bad)).status, 400);
  await again.close();
});

test("a quarantined mutation is followed until it is decided", async () => {
  const collection = "held";
  // Two writes, so that a base of 1 is stale and reaches the handler.
  for (const [id, value] of [["h1", { a: 1 }], ["h2", { a: 2 }]]) {
    assert.equal((await server.json("POST", "/v1/mutations", { id, client: "setup", collection, key: "k", op: "patch", value })).status, 200);
  }
  const failing = { handler: { script: "function resolve(ctx) { throw new Error('the resolver is down'); }" }, on_handler_failure: "quarantine" };
  assert.ok((await server.json("PUT", `/v1/collections/${collection}`, failing)).status < 300);
  const s = await Sluice.open({ url: server.url, client: "gina", outbox: await tempDir("gina"), backoffMinMs: 20, backoffMaxMs: 200 });
  const id = await s.mutate({ collection, key: "k", op: "patch", value: { b: 1 }, baseVersion: 1 });
  let kept;
  for (let i = 0; i < 100 && !kept; i++) {
    const list = await server.json("GET", `/v1/quarantine?collection=${collection}`);
    kept = JSON.stringify(list.body).includes(id);
    if (!kept) await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(kept, "the mutation reached the quarantine");
  assert.deepEqual(s.pending().map((m) => m.id), [id], "quarantined is not decided");
  assert.ok((await server.json("PUT", `/v1/collections/${collection}`, { handler: "automerge" })).status < 300);
  assert.equal((await server.json("POST", `/v1/quarantine/gina/${id}:retry`)).status, 200);
  const answer = await s.settled(id);
  assert.equal(answer.outcome, "merged", JSON.stringify(answer));
  await s.close();
  const now = await doc(collection, "k");
  assert.equal(now.item.b, 1);
  assert.equal(now.version, 3);
});

test("with authentication on, the token is sent as a bearer credential", async () => {
  const dataDir = await tempDir("auth");
  const out = execFileSync(sluiceBin(), ["keys", "create", "--client", "hana", "--role", "writer", "--data-dir", dataDir], { encoding: "utf8" });
  const token = out.trim().split("\n").pop().trim();
  const secured = new Server(await freePort(), dataDir, {}, ["--auth", "keys"]);
  await secured.up();
  try {
    const anonymous = await secured.json("POST", "/v1/mutations", { client: "hana", collection: "c", key: "k", op: "put", value: {} });
    assert.equal(anonymous.status, 401, "the server does want a credential");
    const s = await Sluice.open({ url: secured.url, client: "hana", outbox: await tempDir("hana"), token });
    const id = await s.mutate({ collection: "c", key: "k", op: "put", value: { signed: true } });
    assert.equal((await s.settled(id)).outcome, "applied");
    assert.equal((await s.get("c", "k")).item.signed, true);
    await s.close();
  } finally {
    await secured.down();
  }
});

test("the event stream delivers answers and resumes after the last one seen, across a restart", async () => {
  const collection = "streamed";
  const outbox = await tempDir("ivan");
  const s = await Sluice.open({ url: server.url, client: "ivan", outbox, backoffMinMs: 20, backoffMaxMs: 200 });
  const heard = [];
  const stop = s.subscribe((a) => heard.push(a.id));
  const first = await s.mutate({ collection, key: "k", op: "put", value: { n: 1 } });
  await s.settled(first);
  for (let i = 0; i < 100 && !heard.includes(first); i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(heard.includes(first), "the stream told the answer");
  stop();
  await s.close();

  // Decided while nobody listens: the next stream starts after `first`.
  const later = [];
  for (const id of ["j1", "j2"]) {
    assert.equal((await server.json("POST", "/v1/mutations", { id, client: "ivan", collection, key: id, op: "put", value: {} })).status, 200);
    later.push(id);
  }
  const again = await Sluice.open({ url: server.url, client: "ivan", outbox, backoffMinMs: 20, backoffMaxMs: 200 });
  const resumed = [];
  const stopAgain = again.subscribe((a) => resumed.push(a.id));
  for (let i = 0; i < 100 && resumed.length < 2; i++) await new Promise((r) => setTimeout(r, 50));
  stopAgain();
  await again.close();
  assert.deepEqual(resumed, later, "exactly the answers after the last one seen");
});

test("a second process on the same outbox waits for the first to let go", async () => {
  const outbox = await tempDir("jack");
  const s = await Sluice.open({ url: server.url, client: "jack", outbox });
  const second = worker(["flush", server.url, outbox, "jack", "held", "k", 0, 0]);
  await new Promise((r) => setTimeout(r, 500));
  const id = await s.mutate({ collection: "held-by-first", key: "k", op: "put", value: { n: 1 } });
  await s.flush();
  await s.close();
  const done = await second;
  assert.equal(done.code, 0, done.err);
  // It opened only after the first closed: what it found was already answered.
  assert.equal(done.lines[0], "pending 0");
  const reopened = await Sluice.open({ url: server.url, client: "jack", outbox });
  assert.equal((await reopened.settled(id)).outcome, "applied");
  await reopened.close();
});
