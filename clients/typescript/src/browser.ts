// The browser entry: an outbox is an IndexedDB database, held by one tab
// at a time (a Web Lock); another tab's `open` waits until it is free.

import { Sluice } from "./client.js";
import { IdbOutbox } from "./idb-outbox.js";

Sluice.outboxAt = (name) => new IdbOutbox(name);

export { Sluice, retryAfterMs } from "./client.js";
export type { Answer, MutateInput, OpenOptions, Queued } from "./client.js";
