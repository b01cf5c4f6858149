// The outbox in IndexedDB: one object store of records in the order they
// were appended, each append one `strict`-durability transaction (many
// concurrent appends share one), compacted at open; and a Web Lock that
// one tab of the origin holds for the outbox while it is open (a tab that
// closes or crashes lets go of it).

import { openDB, type IDBPDatabase } from "idb";
import { apply, emptyState, snapshot, type OutboxState, type OutboxStore, type Record_ } from "./outbox.js";

const STORE = "log";

export class IdbOutbox implements OutboxStore {
  private db?: IDBPDatabase;
  private release?: () => void;
  private waiting: { records: Record_[]; done: (e?: unknown) => void }[] = [];
  private writing = false;

  constructor(private readonly name: string) {}

  lock(): Promise<void> {
    if (!globalThis.navigator?.locks) return Promise.reject(new Error("this browser has no Web Locks"));
    return new Promise((acquired, failed) => {
      navigator.locks
        .request(`sluice-outbox:${this.name}`, { mode: "exclusive" }, () => {
          acquired();
          return new Promise<void>((release) => (this.release = release));
        })
        .catch(failed);
    });
  }

  async load(): Promise<OutboxState> {
    this.db = await openDB(this.name, 1, {
      upgrade(db) {
        db.createObjectStore(STORE, { autoIncrement: true });
      },
    });
    const state = emptyState();
    for (const record of (await this.db.getAll(STORE)) as Record_[]) apply(state, record);
    const tx = this.db.transaction(STORE, "readwrite", { durability: "strict" });
    await tx.store.clear();
    for (const record of snapshot(state)) await tx.store.add(record);
    await tx.done;
    return state;
  }

  append(records: Record_[]): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ records, done: (e) => (e === undefined ? resolve() : reject(e)) });
      void this.drain();
    });
  }

  private async drain(): Promise<void> {
    if (this.writing) return;
    this.writing = true;
    try {
      while (this.waiting.length > 0) {
        const batch = this.waiting.splice(0);
        try {
          if (!this.db) throw new Error("the outbox is closed");
          const tx = this.db.transaction(STORE, "readwrite", { durability: "strict" });
          for (const b of batch) for (const r of b.records) void tx.store.add(r);
          await tx.done;
          batch.forEach((b) => b.done());
        } catch (e) {
          batch.forEach((b) => b.done(e));
        }
      }
    } finally {
      this.writing = false;
    }
  }

  async close(): Promise<void> {
    while (this.writing || this.waiting.length > 0) await new Promise((r) => setTimeout(r, 5));
    this.db?.close();
    this.db = undefined;
    this.release?.();
    this.release = undefined;
  }
}
