// One client process of the tests: queues patches, flushes, or both,
// printing a line per step so that the test can follow it (and kill it).
//
// node worker.mjs MODE URL OUTBOX CLIENT COLLECTION KEY N FIRST
//   queue: N patches {e<i>: i, last: i} for i from FIRST, then exit unflushed
//   flush: the outbox's pending mutations sent, each answer printed
//   both:  queue, then flush

import { Sluice } from "../dist/index.js";

const [mode, url, outbox, client, collection, key, n, first] = process.argv.slice(2);
const s = await Sluice.open({ url, client, outbox, backoffMinMs: 20, backoffMaxMs: 500 });
if (mode === "queue" || mode === "both") {
  for (let i = Number(first); i < Number(first) + Number(n); i++) {
    const id = await s.mutate({ collection, key, op: "patch", value: { [`e${i}`]: i, last: i } });
    console.log(`queued ${id}`);
  }
}
if (mode === "flush" || mode === "both") {
  const pending = s.pending();
  console.log(`pending ${pending.length}`);
  for (const m of pending) {
    void s.settled(m.id).then((a) => console.log(`settled ${m.id} ${a.outcome ?? a.status} ${a.version ?? ""}`));
  }
  await s.flush();
  console.log("flushed");
}
await s.close();
