// What the client costs: mutations per second through it against raw
// `fetch` on the same server (same documents, same concurrency), and the
// outbox's write cost per mutation in Node.
//
//   npm run build && node bench/cost.mjs [N]        (N mutations per run, 3,000 by default)
//
// The server is the repository's binary (SLUICE_TEST_BIN, or
// $CARGO_TARGET_DIR/debug/sluice; a release build measures what users
// run: SLUICE_TEST_BIN=$CARGO_TARGET_DIR/release/sluice), on its embedded
// default (SQLite), started here on a free port and stopped at the end.

import { readFile, stat } from "node:fs/promises";
import * as path from "node:path";
import { Sluice } from "../dist/index.js";
import { Server, tempDir } from "../test/server.mjs";

const N = Number(process.argv[2] ?? 3000);
const CONCURRENCY = 32;

const server = await Server.start();
try {
  // Raw fetch and the client in turns, twice, so that neither has the
  // server's warm-up to itself: CONCURRENCY senders each way, one
  // mutation per document, the same bodies.
  const runs = { raw: [], client: [] };
  for (const round of [1, 2]) {
    runs.raw.push(
      await timed(async () => {
        let next = 0;
        await Promise.all(
          Array.from({ length: CONCURRENCY }, async () => {
            for (let i = next++; i < N; i = next++) {
              const r = await fetch(`${server.url}/v1/mutations`, {
                method: "POST",
                headers: { "content-type": "application/json" },
                body: JSON.stringify({ id: `raw-${round}-${i}`, client: "raw", collection: "raw", key: `r${round}-${i}`, op: "patch", value: { n: i } }),
              });
              if (r.status !== 200) throw new Error(`raw POST answered ${r.status}: ${await r.text()}`);
              await r.arrayBuffer();
            }
          }),
        );
      }),
    );
    const s = await Sluice.open({ url: server.url, client: "ts", outbox: await tempDir("cost"), concurrency: CONCURRENCY });
    runs.client.push(
      await timed(async () => {
        const ids = await Promise.all(
          Array.from({ length: N }, (_, i) => s.mutate({ collection: "ts", key: `c${round}-${i}`, op: "patch", value: { n: i } })),
        );
        await s.flush();
        for (const id of ids) {
          const a = await s.settled(id);
          if (a.outcome !== "applied") throw new Error(`client mutation ${id}: ${JSON.stringify(a)}`);
        }
      }),
    );
    await s.close();
  }
  const raw = runs.raw.reduce((a, b) => a + b) / runs.raw.length;
  const client = runs.client.reduce((a, b) => a + b) / runs.client.length;

  // The outbox alone, server unreachable: one mutate at a time (an fdatasync
  // each), then N at once (appends share a sync).
  const offline = await tempDir("cost-offline");
  const o = await Sluice.open({ url: "http://127.0.0.1:9", client: "o", outbox: offline, backoffMinMs: 60_000 });
  const one = Math.min(N, 500);
  const serial = await timed(async () => {
    for (let i = 0; i < one; i++) await o.mutate({ collection: "o", key: `k${i}`, op: "patch", value: { n: i } });
  });
  const batched = await timed(async () => {
    await Promise.all(Array.from({ length: N }, (_, i) => o.mutate({ collection: "o", key: `b${i}`, op: "patch", value: { n: i } })));
  });
  await o.close();
  const logBytes = (await stat(path.join(offline, "outbox.log"))).size;
  const lines = (await readFile(path.join(offline, "outbox.log"), "utf8")).split("\n").filter(Boolean).length;

  const result = {
    mutations: N,
    concurrency: CONCURRENCY,
    raw_fetch_per_s: Math.round(N / raw),
    client_per_s: Math.round(N / client),
    client_over_raw: Number((raw / client).toFixed(3)),
    outbox_us_per_mutation_one_at_a_time: Math.round((serial / one) * 1e6),
    outbox_us_per_mutation_concurrent: Math.round((batched / N) * 1e6),
    outbox_bytes_per_mutation: Math.round(logBytes / lines),
  };
  console.log(JSON.stringify(result, null, 2));
} finally {
  await server.down();
}

async function timed(f) {
  const start = process.hrtime.bigint();
  await f();
  return Number(process.hrtime.bigint() - start) / 1e9;
}
