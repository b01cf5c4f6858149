// The outbox in IndexedDB: one object store of records in the order they
// were appended, each append one `strict`-durability transaction (many
// concurrent appends share one), compacted at open; and a Web Lock that
// one tab of the origin holds for the outbox while it is open (a tab that
// closes or crashes lets go of it).

import { openDB, type IDBPDatabase } from "idb";
import { GroupWriter, apply, emptyState, snapshot, type OutboxState, type OutboxStore, type Record_ } from "./outbox.js";

const STORE = "log";

export class IdbOutbox implements OutboxStore {
  private db?: IDBPDatabase;
  private release?: () => void;
  private readonly writer = new GroupWriter(async (records) => {
    if (!this.db) throw new Error("the outbox is closed");
    const tx = this.db.transaction(STORE, "readwrite", { durability: "strict" });
    for (const r of records) void tx.store.add(r);
    await tx.done;
  });

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
    return this.writer.append(records);
  }

  async close(): Promise<void> {
    await this.writer.idle();
    this.db?.close();
    this.db = undefined;
    this.release?.();
    this.release = undefined;
  }
}
