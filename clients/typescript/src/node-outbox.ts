// The outbox in a directory: an append-only log of JSON lines, each batch
// of appends written and `fdatasync`ed before the promise resolves (many
// concurrent appends share one sync), compacted at open; and a lock file
// naming the process that holds the outbox.

import { promises as fs, constants } from "node:fs";
import * as path from "node:path";
import { GroupWriter, apply, emptyState, snapshot, type OutboxState, type OutboxStore, type Record_ } from "./outbox.js";

const LOG = "outbox.log";
const LOCK = "lock";
const LOCK_POLL_MS = 100;

export class NodeOutbox implements OutboxStore {
  private file?: fs.FileHandle;
  private readonly writer = new GroupWriter(async (records) => {
    if (!this.file) throw new Error("the outbox is closed");
    await this.file.write(records.map((r) => JSON.stringify(r) + "\n").join(""));
    await this.file.datasync();
  });
  private locked = false;

  constructor(private readonly dir: string) {}

  async lock(): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true });
    const lockPath = path.join(this.dir, LOCK);
    for (;;) {
      try {
        const handle = await fs.open(lockPath, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY);
        await handle.writeFile(String(process.pid));
        await handle.sync();
        await handle.close();
        this.locked = true;
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      }
      // Held: by a live process, wait; by one that died (kill -9), take it.
      const holder = Number.parseInt(await fs.readFile(lockPath, "utf8").catch(() => ""), 10);
      if (!Number.isFinite(holder) || holder <= 0 || !alive(holder)) {
        await fs.rm(lockPath, { force: true });
        continue;
      }
      await new Promise((r) => setTimeout(r, LOCK_POLL_MS));
    }
  }

  async load(): Promise<OutboxState> {
    await fs.mkdir(this.dir, { recursive: true });
    const logPath = path.join(this.dir, LOG);
    const text = await fs.readFile(logPath, "utf8").catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return "";
      throw e;
    });
    const state = emptyState();
    const lines = text.split("\n");
    for (const [i, line] of lines.entries()) {
      if (line.trim() === "") continue;
      let record: Record_;
      try {
        record = JSON.parse(line) as Record_;
      } catch (e) {
        // Only the last line may be torn (a crash mid-write); it was never
        // acknowledged, since its sync had not returned.
        if (i >= lines.length - 2) break;
        throw new Error(`${logPath} line ${i + 1} is not JSON: ${String(e)}`);
      }
      apply(state, record);
    }
    // Compaction: the state's records into a new file, swapped in whole.
    const tmp = `${logPath}.tmp`;
    const out = await fs.open(tmp, "w");
    const body = snapshot(state).map((r) => JSON.stringify(r) + "\n").join("");
    await out.writeFile(body);
    await out.sync();
    await out.close();
    await fs.rename(tmp, logPath);
    await syncDir(this.dir);
    this.file = await fs.open(logPath, "a");
    return state;
  }

  append(records: Record_[]): Promise<void> {
    return this.writer.append(records);
  }

  async close(): Promise<void> {
    await this.writer.idle();
    await this.file?.close();
    this.file = undefined;
    if (this.locked) {
      await fs.rm(path.join(this.dir, LOCK), { force: true });
      this.locked = false;
    }
  }
}

function alive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

async function syncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
