// Just enough WebDriver for the browser tests: the headless Chromium and
// chromedriver the repository's test command installs
// (SLUICE_TEST_CHROMIUM, SLUICE_TEST_CHROMEDRIVER), one session, tabs, and
// scripts run in the page.

import { execFileSync, spawn } from "node:child_process";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer } from "node:http";
import * as path from "node:path";
import { freePort, tempDir } from "./server.mjs";

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".map": "application/json" };

/** Serves the package's directory (the built client, its dependencies, the test page). */
export async function staticServer(root) {
  const port = await freePort();
  const server = createServer(async (req, res) => {
    const file = path.join(root, decodeURIComponent(new URL(req.url, "http://x").pathname));
    if (!file.startsWith(root) || !(await stat(file).catch(() => null))?.isFile()) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" });
    createReadStream(file).pipe(res);
  });
  await new Promise((r) => server.listen(port, "127.0.0.1", r));
  return { origin: `http://127.0.0.1:${port}`, close: () => server.close() };
}

export class Browser {
  static async start() {
    const chromedriver = process.env.SLUICE_TEST_CHROMEDRIVER ?? which("chromedriver");
    const chromium = process.env.SLUICE_TEST_CHROMIUM ?? which("chromium");
    const port = await freePort();
    const driver = spawn(chromedriver, [`--port=${port}`], { stdio: "ignore" });
    const base = `http://127.0.0.1:${port}`;
    for (let i = 0; ; i++) {
      try {
        if ((await fetch(`${base}/status`)).ok) break;
      } catch {}
      if (i > 100) throw new Error("chromedriver did not start");
      await new Promise((r) => setTimeout(r, 100));
    }
    const profile = await tempDir("chromium");
    const created = await call(base, "POST", "/session", {
      capabilities: {
        alwaysMatch: {
          browserName: "chrome",
          "goog:chromeOptions": { binary: chromium, args: ["--headless=new", "--no-sandbox", "--disable-gpu", `--user-data-dir=${profile}`] },
        },
      },
    });
    const b = new Browser(base, created.sessionId, driver);
    await b.cmd("POST", "/timeouts", { script: 60_000 });
    return b;
  }

  constructor(base, session, driver) {
    this.base = base;
    this.session = session;
    this.driver = driver;
  }

  cmd(method, route, body) {
    return call(this.base, method, `/session/${this.session}${route}`, body);
  }

  async open(url) {
    await this.cmd("POST", "/url", { url });
    for (let i = 0; !(await this.run("return window.ready === true")); i++) {
      if (i > 100) throw new Error(`${url} did not load its module`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Runs `body` (an async function body) in the page; its return value comes back. */
  async run(body, ...args) {
    const script = `const done = arguments[arguments.length - 1];
      (async (...args) => { ${body} })(...Array.from(arguments).slice(0, -1))
        .then((value) => done({ value }), (e) => done({ error: String(e && e.stack || e) }));`;
    const out = await this.cmd("POST", "/execute/async", { script, args });
    if (out.error) throw new Error(`in the page: ${out.error}`);
    return out.value;
  }

  async newTab() {
    const { handle } = await this.cmd("POST", "/window/new", { type: "tab" });
    return handle;
  }

  async tab() {
    return this.cmd("GET", "/window");
  }

  async switchTo(handle) {
    await this.cmd("POST", "/window", { handle });
  }

  async quit() {
    await this.cmd("DELETE", "").catch(() => {});
    this.driver.kill();
  }
}

/** A program's absolute path (chromedriver wants the browser's). */
function which(program) {
  return execFileSync("sh", ["-c", `command -v ${program}`], { encoding: "utf8" }).trim();
}

async function call(base, method, route, body) {
  const r = await fetch(`${base}${route}`, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await r.json();
  if (!r.ok) throw new Error(`WebDriver ${method} ${route}: ${r.status} ${JSON.stringify(json)}`);
  return json.value;
}
