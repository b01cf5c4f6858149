// The built package in headless Chromium against a real Sluice: edits
// queued offline survive a reload in IndexedDB and are delivered once the
// server is reachable; two tabs on one outbox send each mutation once.

import assert from "node:assert/strict";
import * as path from "node:path";
import { after, before, test } from "node:test";
import { Server, freePort, tempDir } from "./server.mjs";
import { Browser, staticServer } from "./webdriver.mjs";

const ROOT = path.resolve(import.meta.dirname, "..");
let browser;
let site;
let page;

before(async () => {
  site = await staticServer(ROOT);
  page = `${site.origin}/test/browser/page.html`;
  browser = await Browser.start();
});

after(async () => {
  await browser?.quit();
  site?.close();
});

/** A server that is not running yet, on the port the page will use. */
async function laterServer() {
  return new Server(await freePort(), await tempDir("data"), { SLUICE_CORS_ORIGINS: `["${site.origin}"]` });
}

test("edits queued offline survive a reload and are delivered once the server is reachable", async () => {
  const server = await laterServer();
  await browser.open(page);
  const ids = await browser.run(
    `const s = await Sluice.open({ url: args[0], client: "web", outbox: "reloaded", backoffMinMs: 50, backoffMaxMs: 500 });
     const ids = [];
     for (let i = 1; i <= 5; i++) ids.push(await s.mutate({ collection: "notes", key: "n1", op: "patch", value: { ["e" + i]: i, last: i } }));
     return ids;`,
    server.url,
  );
  assert.equal(ids.length, 5);

  await browser.open(page); // the reload: the tab's state is gone, IndexedDB is not
  const pending = await browser.run(
    `window.s = await Sluice.open({ url: args[0], client: "web", outbox: "reloaded", backoffMinMs: 50, backoffMaxMs: 500 });
     return s.pending().map((m) => m.id);`,
    server.url,
  );
  assert.deepEqual(pending, ids);

  await server.up();
  try {
    const answers = await browser.run(
      `await s.flush();
       const answers = [];
       for (const id of args[0]) answers.push(await s.settled(id));
       await s.close();
       return answers;`,
      ids,
    );
    assert.deepEqual(answers.map((a) => a.outcome), ["applied", "applied", "applied", "applied", "applied"]);
    const doc = await server.json("GET", "/v1/documents/notes/n1");
    assert.equal(doc.body.version, 5, "each edit applied once");
    for (let i = 1; i <= 5; i++) assert.equal(doc.body.item[`e${i}`], i);
    assert.equal(doc.body.item.last, 5);
  } finally {
    await server.down();
  }
});

test("two tabs on one outbox send each mutation once", async () => {
  const server = await laterServer();
  await browser.open(page);
  const first = await browser.tab();
  const ids = await browser.run(
    `window.s = await Sluice.open({ url: args[0], client: "tabs", outbox: "shared", backoffMinMs: 50, backoffMaxMs: 500 });
     const ids = [];
     for (let i = 1; i <= 10; i++) ids.push(await s.mutate({ collection: "notes", key: "n2", op: "patch", value: { ["e" + i]: i } }));
     return ids;`,
    server.url,
  );
  const second = await browser.newTab();
  await browser.switchTo(second);
  await browser.open(page);
  // The second tab's open waits for the first to let go of the outbox.
  await browser.run(
    `window.opened = false;
     Sluice.open({ url: args[0], client: "tabs", outbox: "shared", backoffMinMs: 50, backoffMaxMs: 500 })
       .then((s) => { window.s = s; window.opened = true; });
     await new Promise((r) => setTimeout(r, 300));
     return window.opened;`,
    server.url,
  ).then((opened) => assert.equal(opened, false, "the second tab opened an outbox the first holds"));

  await server.up();
  try {
    await browser.switchTo(first);
    await browser.run(`await s.flush(); await s.close();`);
    await browser.switchTo(second);
    const seen = await browser.run(
      `for (let i = 0; !window.opened && i < 200; i++) await new Promise((r) => setTimeout(r, 50));
       if (!window.opened) throw new Error("the second tab never got the outbox");
       const pending = s.pending().length;
       await s.flush();
       const answers = [];
       for (const id of args[0]) answers.push((await s.settled(id)).outcome);
       await s.close();
       return { pending, answers };`,
      ids,
    );
    assert.equal(seen.pending, 0, "the first tab's mutations were answered, and the second sees it");
    assert.deepEqual(seen.answers, Array(10).fill("applied"));
    const doc = await server.json("GET", "/v1/documents/notes/n2");
    assert.equal(doc.body.version, 10, "each mutation applied once");
  } finally {
    await server.down();
  }
});
