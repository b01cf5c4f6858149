#!/usr/bin/env python3
"""A conflict-resolution webhook for Sluice, standard library only.

Sluice POSTs the resolve context {collection, key, op, client, base_version,
existing, existing_version, incoming} and reads back
{"action": "resolve", "item": {...}} | {"action": "reject", "reason": "..."} | {"action": "remove"}.

This one keeps the server's fields and lets the incoming value win field by
field, except that it refuses to clear a title.

    python3 examples/webhook.py 8090
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Resolve(BaseHTTPRequestHandler):
    def do_POST(self):
        ctx = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        incoming = ctx["incoming"] or {}
        if incoming.get("title") == "":
            answer = {"action": "reject", "reason": "a title may not be cleared"}
        else:
            answer = {"action": "resolve", "item": {**(ctx["existing"] or {}), **incoming}}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8090
    HTTPServer(("127.0.0.1", port), Resolve).serve_forever()
