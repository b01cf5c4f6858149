// The client's half of Sluice's guarantees: an id given once and resent
// unchanged until answered, a document's mutations sent in order, the base
// version frozen before the first send, durability before `mutate`
// resolves, back-off when told, and the event stream resumed where it
// stopped.

import { createParser, type EventSourceMessage } from "eventsource-parser";
import { ulid } from "ulid";
import { apply, docKey, type Answer, type OutboxState, type OutboxStore, type Queued, type Record_ } from "./outbox.js";

export type { Answer, Queued } from "./outbox.js";

export interface OpenOptions {
  /** The Sluice server, e.g. `http://127.0.0.1:7070`. */
  url: string;
  /** Who this client is: ids are unique per client, answers stream per client. */
  client: string;
  /** A directory path in Node, an IndexedDB database name in a browser. */
  outbox: string;
  /** Sent as `Authorization: Bearer` when authentication is on. */
  token?: string;
  /** Documents sent to at once (each document's mutations go one at a time). */
  concurrency?: number;
  /** The shortest and longest wait between resends, ms. */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** `fetch` to use (the global one by default). */
  fetch?: typeof fetch;
}

export interface MutateInput {
  collection: string;
  key: string;
  op: Queued["op"];
  value?: Record<string, unknown> | null;
  /** The version the edit was made against; by default the last one this client saw. */
  baseVersion?: number;
}

/** Statuses that no resend can change: the mutation settles with the error. */
const FINAL_REFUSALS = new Set([400, 413, 415, 422]);

export class Sluice {
  private readonly state: OutboxState;
  private readonly inFlight = new Set<string>();
  private readonly waiters = new Map<string, ((a: Answer) => void)[]>();
  private readonly flushers: (() => void)[] = [];
  private readonly retryAt = new Map<string, number>();
  private readonly attempts = new Map<string, number>();
  private readonly fetch: typeof fetch;
  private readonly concurrency: number;
  private readonly backoffMinMs: number;
  private readonly backoffMaxMs: number;
  private timer?: ReturnType<typeof setTimeout>;
  private closed = false;
  private readonly streams = new Set<AbortController>();

  private constructor(
    private readonly options: OpenOptions,
    private readonly store: OutboxStore,
    state: OutboxState,
  ) {
    this.state = state;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.concurrency = options.concurrency ?? 8;
    this.backoffMinMs = options.backoffMinMs ?? 100;
    this.backoffMaxMs = options.backoffMaxMs ?? 30_000;
  }

  /** Where `open` keeps an outbox: set by the entry point (a directory in Node). */
  static outboxAt?: (name: string) => OutboxStore;

  /** Opens the outbox (waiting for another process or tab holding it) and starts sending what it holds. */
  static async open(options: OpenOptions): Promise<Sluice> {
    if (!Sluice.outboxAt) throw new Error("no outbox for this environment");
    return Sluice.openWith(options, Sluice.outboxAt(options.outbox));
  }

  /** `open`, with the outbox given. */
  static async openWith(options: OpenOptions, store: OutboxStore): Promise<Sluice> {
    if (!options.url || !options.client || !options.outbox) {
      throw new TypeError("Sluice.open needs url, client and outbox");
    }
    await store.lock();
    const state = await store.load();
    const s = new Sluice({ ...options, url: options.url.replace(/\/+$/, "") }, store, state);
    s.pump();
    return s;
  }

  /** Queues a mutation; resolves with its id once it is durable in the outbox. */
  async mutate(input: MutateInput): Promise<string> {
    this.open();
    const m: Queued = {
      id: ulid(),
      collection: input.collection,
      key: input.key,
      op: input.op,
      atMs: Date.now(),
    };
    if (input.value !== undefined) m.value = input.value;
    if (input.baseVersion !== undefined) m.baseVersion = input.baseVersion;
    const records: Record_[] = [{ t: "queued", m }];
    const k = docKey(m.collection, m.key);
    if (!this.state.pending.some((p) => docKey(p.m.collection, p.m.key) === k)) {
      // Nothing of this document waits before it: its base is known now,
      // and frozen with it (no write of its own before the first send).
      records.push({ t: "base", id: m.id, base: m.baseVersion ?? this.state.versions.get(k) ?? null });
    }
    await this.record(records);
    this.pump();
    return m.id;
  }

  /** The server's final answer to `id` (also one given before a restart). */
  settled(id: string): Promise<Answer> {
    const known = this.state.answers.get(id);
    if (known) return Promise.resolve(known);
    if (!this.state.pending.some((p) => p.m.id === id)) {
      return Promise.reject(new Error(`no mutation ${id} in this outbox`));
    }
    return new Promise((resolve) => {
      const list = this.waiters.get(id) ?? [];
      list.push(resolve);
      this.waiters.set(id, list);
    });
  }

  /** The mutations not yet answered, oldest first. */
  pending(): Queued[] {
    return this.state.pending.map((p) => ({ ...p.m }));
  }

  /** Resolves when every pending mutation is answered. */
  flush(): Promise<void> {
    this.open();
    if (this.state.pending.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.flushers.push(resolve));
  }

  /** The document, and the client remembers its version as its next base. */
  async get(collection: string, key: string): Promise<{ item: Record<string, unknown> | null; version: number }> {
    this.open();
    const url = `${this.options.url}/v1/documents/${encodeURIComponent(collection)}/${encodeURIComponent(key)}`;
    const response = await this.fetch(url, { headers: this.headers() });
    if (response.status === 404) return { item: null, version: 0 };
    const body = (await response.json()) as { item?: Record<string, unknown>; version?: number; error?: unknown };
    if (!response.ok) throw new Error(`GET ${collection}/${key}: ${response.status} ${JSON.stringify(body)}`);
    const version = body.version ?? 0;
    await this.seen(collection, key, version);
    return { item: body.item ?? null, version };
  }

  /** The client's answers as they are decided, resumed after the last one seen; returns a function that stops it. */
  subscribe(onAnswer: (answer: Answer) => void): () => void {
    this.open();
    const controller = new AbortController();
    this.streams.add(controller);
    void this.stream(controller.signal, onAnswer);
    return () => {
      controller.abort();
      this.streams.delete(controller);
    };
  }

  /** Stops sending and streaming and lets go of the outbox; unsent mutations stay in it. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    for (const c of this.streams) c.abort();
    this.streams.clear();
    await this.store.close();
  }

  private open(): void {
    if (this.closed) throw new Error("this Sluice client is closed");
  }

  private headers(json = false): Record<string, string> {
    const h: Record<string, string> = {};
    if (json) h["content-type"] = "application/json";
    if (this.options.token) h.authorization = `Bearer ${this.options.token}`;
    return h;
  }

  private async record(records: Record_[]): Promise<void> {
    await this.store.append(records);
    for (const r of records) apply(this.state, r);
  }

  private async seen(collection: string, key: string, version: number): Promise<void> {
    const known = this.state.versions.get(docKey(collection, key));
    if (known !== undefined && known >= version) return;
    await this.record([{ t: "version", collection, key, version }]);
  }

  /** Starts what may be sent now: each document's oldest pending mutation, a few documents at once. */
  private pump(): void {
    if (this.closed) return;
    const now = Date.now();
    const seen = new Set<string>();
    let next = Infinity;
    for (const p of this.state.pending) {
      if (this.inFlight.size >= this.concurrency) break;
      const k = docKey(p.m.collection, p.m.key);
      // Each document's oldest pending mutation only.
      if (seen.has(k)) continue;
      seen.add(k);
      if (this.inFlight.has(k)) continue;
      const at = this.retryAt.get(p.m.id) ?? 0;
      if (at > now) {
        next = Math.min(next, at);
        continue;
      }
      this.inFlight.add(k);
      void this.send(p).finally(() => {
        this.inFlight.delete(k);
        this.pump();
      });
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (next !== Infinity) this.timer = setTimeout(() => this.pump(), Math.max(0, next - Date.now()));
  }

  private async send(p: { m: Queued; base?: number | null }): Promise<void> {
    const { m } = p;
    try {
      if (p.base === undefined) {
        // Frozen before the first send: every resend carries the same body.
        const base = m.baseVersion ?? this.state.versions.get(docKey(m.collection, m.key)) ?? null;
        await this.record([{ t: "base", id: m.id, base }]);
      }
      const body: Record<string, unknown> = {
        id: m.id,
        client: this.options.client,
        collection: m.collection,
        key: m.key,
        op: m.op,
        ts_ms: m.atMs,
      };
      if (m.value !== undefined) body.value = m.value;
      if (p.base !== null && p.base !== undefined) body.base_version = p.base;
      let response = await this.fetch(`${this.options.url}/v1/mutations`, {
        method: "POST",
        headers: this.headers(true),
        body: JSON.stringify(body),
      });
      let answer = (await response.json().catch(() => ({}))) as Record<string, unknown>;
      // Queued or quarantined: followed until decided.
      while (response.status === 202 && !this.closed) {
        await new Promise((r) => setTimeout(r, this.backoff(m.id)));
        response = await this.fetch(
          `${this.options.url}/v1/mutations/${encodeURIComponent(m.id)}?client=${encodeURIComponent(this.options.client)}`,
          { headers: this.headers() },
        );
        answer = (await response.json().catch(() => ({}))) as Record<string, unknown>;
        if (response.status === 200 && answer.outcome === undefined) {
          response = new Response(null, { status: 202 });
        }
      }
      if (this.closed) return;
      if (response.status === 200 || response.status === 409) {
        await this.settle(m, { ...(answer as Partial<Answer>), id: m.id, status: response.status });
        return;
      }
      if (FINAL_REFUSALS.has(response.status) || (response.status === 404 && m.op === "delete")) {
        const error = (answer.error as Answer["error"]) ?? { code: "http_" + response.status, message: JSON.stringify(answer) };
        await this.settle(m, { id: m.id, status: response.status, error });
        return;
      }
      // 429, 503, 5xx, 401/403 (a token may come): resent later, unchanged.
      this.later(m.id, retryAfterMs(response.headers.get("retry-after")));
    } catch {
      // The network, or the server away: resent later, unchanged.
      if (!this.closed) this.later(m.id, 0);
    }
  }

  private backoff(id: string): number {
    const n = (this.attempts.get(id) ?? 0) + 1;
    this.attempts.set(id, n);
    const ceiling = Math.min(this.backoffMaxMs, this.backoffMinMs * 2 ** Math.min(n - 1, 20));
    // Full jitter: clients told to wait together do not come back together.
    return this.backoffMinMs + Math.random() * (ceiling - this.backoffMinMs);
  }

  private later(id: string, atLeastMs: number): void {
    this.retryAt.set(id, Date.now() + Math.max(atLeastMs, this.backoff(id)));
  }

  private async settle(m: Queued, answer: Answer): Promise<void> {
    if (this.state.answers.has(m.id)) return;
    const records: Record_[] = [{ t: "settled", answer }];
    if (typeof answer.version === "number" && answer.outcome !== "rejected") {
      records.push({ t: "version", collection: m.collection, key: m.key, version: answer.version });
    }
    await this.record(records);
    this.retryAt.delete(m.id);
    this.attempts.delete(m.id);
    for (const resolve of this.waiters.get(m.id) ?? []) resolve(answer);
    this.waiters.delete(m.id);
    if (this.state.pending.length === 0) this.flushers.splice(0).forEach((f) => f());
  }

  private async stream(signal: AbortSignal, onAnswer: (a: Answer) => void): Promise<void> {
    let failures = 0;
    while (!signal.aborted) {
      try {
        const headers = this.headers();
        headers.accept = "text/event-stream";
        if (this.state.lastEventId) headers["last-event-id"] = this.state.lastEventId;
        const url = `${this.options.url}/v1/events?client=${encodeURIComponent(this.options.client)}${this.state.lastEventId ? "" : "&since=start"}`;
        const response = await this.fetch(url, { headers, signal });
        if (!response.ok || !response.body) throw new Error(`GET /v1/events: ${response.status}`);
        failures = 0;
        const events: EventSourceMessage[] = [];
        const parser = createParser({ onEvent: (e) => events.push(e) });
        const decoder = new TextDecoder();
        for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
          parser.feed(decoder.decode(chunk, { stream: true }));
          for (const e of events.splice(0)) await this.onEvent(e, onAnswer);
        }
      } catch {
        if (signal.aborted) return;
      }
      failures += 1;
      const wait = Math.min(this.backoffMaxMs, this.backoffMinMs * 2 ** Math.min(failures, 10));
      await new Promise((r) => setTimeout(r, Math.random() * wait));
    }
  }

  private async onEvent(e: EventSourceMessage, onAnswer: (a: Answer) => void): Promise<void> {
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(e.data) as Record<string, unknown>;
    } catch {
      return;
    }
    const id = typeof body.id === "string" ? body.id : undefined;
    if (!id) return;
    const status = body.outcome === "rejected" ? 409 : 200;
    const answer: Answer = { ...(body as Partial<Answer>), id, status };
    const pending = this.state.pending.find((p) => p.m.id === id);
    if (pending && answer.outcome !== undefined) await this.settle(pending.m, answer);
    else if (typeof answer.version === "number" && typeof body.collection === "string" && typeof body.key === "string" && answer.outcome !== "rejected") {
      await this.seen(body.collection, body.key, answer.version);
    }
    if (e.id) await this.record([{ t: "event", lastEventId: e.id }]);
    onAnswer(answer);
  }
}

/** `Retry-After` in ms (seconds or an HTTP date); 0 when absent or unreadable. */
export function retryAfterMs(value: string | null): number {
  if (!value) return 0;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const at = Date.parse(value);
  return Number.isFinite(at) ? Math.max(0, at - Date.now()) : 0;
}
