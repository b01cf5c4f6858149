// What a client keeps between runs: its unanswered mutations, in order,
// the answers it got, the last version it saw of each document and where
// its event stream stopped. Node keeps it in a directory, a browser in
// IndexedDB; both behind this interface.

import type { components } from "./openapi.js";

type Schemas = components["schemas"];

/** A mutation as the application asked for it, with the id it was given. */
export interface Queued {
  id: string;
  collection: string;
  key: string;
  op: Schemas["OpName"];
  value?: Record<string, unknown> | null;
  /** The base the application gave, if it gave one. */
  baseVersion?: number;
  /** When `mutate` was called, ms since the epoch. */
  atMs: number;
}

/**
 * The server's final word on a mutation: its decision (`MutationResult`,
 * 200 or 409), or a refusal no resend can change (`error`, with its 4xx).
 */
export interface Answer extends Partial<Omit<Schemas["MutationResult"], "id">> {
  id: string;
  /** The HTTP status of the answer. */
  status: number;
  error?: Schemas["ErrorDetail"];
}

/** One change to the outbox, appended in order; replaying them rebuilds it. */
export type Record_ =
  | { t: "queued"; m: Queued }
  /** The base version the mutation is sent with, frozen before its first send. */
  | { t: "base"; id: string; base: number | null }
  | { t: "settled"; answer: Answer }
  | { t: "version"; collection: string; key: string; version: number }
  | { t: "event"; lastEventId: string };

export interface OutboxState {
  /** Every mutation not yet answered, oldest first, with its frozen base. */
  pending: { m: Queued; base?: number | null }[];
  /** Answers kept for `settled`, oldest first (bounded). */
  answers: Map<string, Answer>;
  versions: Map<string, number>;
  lastEventId?: string;
}

/** Where the outbox lives. `append` resolves once the records are durable. */
export interface OutboxStore {
  load(): Promise<OutboxState>;
  append(records: Record_[]): Promise<void>;
  /** Waits until no other process or tab holds this outbox, then holds it. */
  lock(): Promise<void>;
  close(): Promise<void>;
}

/** Answers an outbox remembers after they settle, at most. */
export const ANSWERS_KEPT = 10_000;

export function docKey(collection: string, key: string): string {
  return `${collection}\u0000${key}`;
}

/** Applies one record to a state being rebuilt or kept. */
export function apply(state: OutboxState, record: Record_): void {
  switch (record.t) {
    case "queued":
      state.pending.push({ m: record.m });
      break;
    case "base": {
      const entry = state.pending.find((p) => p.m.id === record.id);
      if (entry && entry.base === undefined) entry.base = record.base;
      break;
    }
    case "settled": {
      const i = state.pending.findIndex((p) => p.m.id === record.answer.id);
      if (i >= 0) state.pending.splice(i, 1);
      state.answers.delete(record.answer.id);
      state.answers.set(record.answer.id, record.answer);
      while (state.answers.size > ANSWERS_KEPT) {
        const oldest = state.answers.keys().next().value;
        if (oldest === undefined) break;
        state.answers.delete(oldest);
      }
      break;
    }
    case "version": {
      const k = docKey(record.collection, record.key);
      if ((state.versions.get(k) ?? -1) < record.version) state.versions.set(k, record.version);
      break;
    }
    case "event":
      state.lastEventId = record.lastEventId;
      break;
  }
}

export function emptyState(): OutboxState {
  return { pending: [], answers: new Map(), versions: new Map() };
}

/** The records that rebuild `state`: what a compaction writes. */
export function snapshot(state: OutboxState): Record_[] {
  const records: Record_[] = [];
  for (const [k, version] of state.versions) {
    const [collection, key] = k.split("\u0000");
    records.push({ t: "version", collection, key, version });
  }
  for (const answer of state.answers.values()) records.push({ t: "settled", answer });
  for (const p of state.pending) {
    records.push({ t: "queued", m: p.m });
    if (p.base !== undefined) records.push({ t: "base", id: p.m.id, base: p.base });
  }
  if (state.lastEventId !== undefined) records.push({ t: "event", lastEventId: state.lastEventId });
  return records;
}

/**
 * Appends as a store makes them durable: one write at a time, and the
 * appends that arrive while one is written go together in the next (one
 * sync for many mutations). `write` gets the records of every waiting
 * append, in order.
 */
export class GroupWriter {
  private waiting: { records: Record_[]; done: (e?: unknown) => void }[] = [];
  private writing = false;

  constructor(private readonly write: (records: Record_[]) => Promise<void>) {}

  append(records: Record_[]): Promise<void> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ records, done: (e) => (e === undefined ? resolve() : reject(e)) });
      void this.drain();
    });
  }

  /** Resolves once nothing is being written or waiting. */
  async idle(): Promise<void> {
    while (this.writing || this.waiting.length > 0) await new Promise((r) => setTimeout(r, 5));
  }

  private async drain(): Promise<void> {
    if (this.writing) return;
    this.writing = true;
    try {
      while (this.waiting.length > 0) {
        const batch = this.waiting.splice(0);
        try {
          await this.write(batch.flatMap((b) => b.records));
          batch.forEach((b) => b.done());
        } catch (e) {
          batch.forEach((b) => b.done(e));
        }
      }
    } finally {
      this.writing = false;
    }
  }
}
