// Two windows, one note: each window is a client with its own outbox; an
// edit is sent with the version the window last loaded, so an edit made
// while the other window saved is a conflict, and the collection's handler
// (automerge) decides it. The log shows what Sluice decided.

import { Sluice } from "/clients/typescript/dist/browser.js";

const params = new URLSearchParams(location.search);
const client = params.get("client") ?? "alice";
const url = params.get("sluice") ?? "http://127.0.0.1:7070";
const key = params.get("note") ?? "welcome";
const $ = (id) => document.getElementById(id);
$("client").textContent = client;
$("key").textContent = key;

const s = await Sluice.open({ url, client, outbox: `notes-${client}` });
let version = 0;

async function reload() {
  const doc = await s.get("notes", key);
  version = doc.version;
  $("title").value = doc.item?.title ?? "";
  $("body").value = doc.item?.body ?? "";
  $("version").textContent = String(version);
}

function show(answer, what) {
  const li = document.createElement("li");
  li.className = answer.outcome ?? "rejected";
  const conflict = answer.conflict ? ` — conflict: ${JSON.stringify(answer.conflict)}` : "";
  const error = answer.error ? ` — ${answer.error.message}` : "";
  li.textContent = `${what}: ${answer.outcome ?? answer.status}${answer.version ? ` (version ${answer.version})` : ""}${conflict}${error}`;
  $("log").prepend(li);
  $("pending").textContent = String(s.pending().length);
}

$("save").onclick = async () => {
  const value = { title: $("title").value, body: $("body").value, by: client };
  const id = await s.mutate({ collection: "notes", key, op: "patch", value, baseVersion: version });
  $("pending").textContent = String(s.pending().length);
  const answer = await s.settled(id);
  show(answer, `your edit based on version ${version}`);
  if (answer.version) await reload();
};
$("reload").onclick = reload;
s.subscribe((answer) => $("pending").textContent = String(s.pending().length));
await reload().catch(() => {});
$("pending").textContent = String(s.pending().length);
