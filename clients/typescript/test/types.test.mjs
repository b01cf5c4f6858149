// The committed API types are what the server describes: regenerate them
// with `node scripts/gen-types.mjs URL` when this fails.

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";
import { OUT, generate } from "../scripts/gen-types.mjs";
import { Server } from "./server.mjs";

test("src/openapi.ts matches the server's /openapi.json", async () => {
  const server = await Server.start();
  try {
    const fresh = await generate(`${server.url}/openapi.json`);
    const committed = await readFile(OUT, "utf8");
    assert.ok(committed === fresh, "src/openapi.ts has drifted from the server's description: run node scripts/gen-types.mjs " + `${server.url}/openapi.json`);
  } finally {
    await server.down();
  }
});
