// The Node entry: an outbox is a directory.

import { Sluice } from "./client.js";
import { NodeOutbox } from "./node-outbox.js";

Sluice.outboxAt = (dir) => new NodeOutbox(dir);

export { Sluice, retryAfterMs } from "./client.js";
export type { Answer, MutateInput, OpenOptions, Queued } from "./client.js";
