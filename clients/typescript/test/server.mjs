// A real Sluice server for the tests: the binary the repository builds
// (SLUICE_TEST_BIN, or $CARGO_TARGET_DIR/debug/sluice), on a free port and a
// temporary data directory, stopped and started again on the same ones.

import { spawn } from "node:child_process";
import { mkdtemp } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import * as path from "node:path";

export function sluiceBin() {
  if (process.env.SLUICE_TEST_BIN) return process.env.SLUICE_TEST_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? path.resolve(import.meta.dirname, "../../../target");
  return path.join(target, "debug", "sluice");
}

export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export async function tempDir(name) {
  return mkdtemp(path.join(tmpdir(), `sluice-ts-${name}-`));
}

export class Server {
  constructor(port, dataDir, env = {}, args = []) {
    this.port = port;
    this.dataDir = dataDir;
    this.env = env;
    this.args = args;
    this.url = `http://127.0.0.1:${port}`;
    this.child = undefined;
  }

  static async start(env = {}, args = []) {
    const server = new Server(await freePort(), await tempDir("data"), env, args);
    await server.up();
    return server;
  }

  async up() {
    this.child = spawn(sluiceBin(), ["serve", "--listen", `127.0.0.1:${this.port}`, "--data-dir", this.dataDir, ...this.args], {
      env: { ...process.env, ...this.env },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let log = "";
    this.child.stderr.on("data", (d) => {
      log = (log + d).slice(-4000);
    });
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (this.child.exitCode !== null) throw new Error(`sluice serve exited: ${log}`);
      try {
        const r = await fetch(`${this.url}/healthz`);
        if (r.ok) return;
      } catch {}
      if (Date.now() > deadline) throw new Error(`sluice serve did not become healthy: ${log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async down(signal = "SIGTERM") {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill(signal);
    await exited;
    this.child = undefined;
  }

  async json(method, route, body) {
    const r = await fetch(`${this.url}${route}`, {
      method,
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: r.status, body: await r.json().catch(() => null) };
  }
}
