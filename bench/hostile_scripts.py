#!/usr/bin/env python3
"""Six hostile scripts beside an unrelated collection (issue 14, finding 4).

Usage: bench/hostile_scripts.py URL   (a running `sluice serve` on defaults)

Configures six collections with a script that catches its own out-of-memory
errors in a loop, then measures 500 sequential writes to an `optimistic`
collection alone, and again while a separate process keeps six conflicts
that run the script in flight. Prints both p50/p99 and the hostile answers.
"""
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

URL = sys.argv[1]
HOSTILE = "function resolve(ctx){var a=[];for(;;){try{a.push(new Array(100000).fill(1))}catch(e){a=[]}}}"


def post(path, body, method="POST"):
    request = urllib.request.Request(URL + path, data=json.dumps(body).encode(), method=method,
                                     headers={"content-type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            code, text = response.status, response.read()
    except urllib.error.HTTPError as e:
        code, text = e.code, e.read()
    return code, json.loads(text or b"null"), time.perf_counter() - started


def storms(seconds):
    """Six clients, each resending a conflict that runs the hostile script."""
    until, answers = time.time() + seconds, []

    def storm(i):
        while time.time() < until:
            _, body, took = post("/v1/mutations", {"collection": f"h{i}", "key": "k", "op": "put",
                                                   "value": {"v": 3}, "base_version": 1})
            answers.append((took, (body.get("conflict") or {}).get("reason")))

    threads = [threading.Thread(target=storm, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = sorted(t for t, _ in answers)
    print(f"hostile answers: {len(took)}, p50 {took[len(took) // 2] * 1000:.1f} ms, "
          f"max {took[-1] * 1000:.1f} ms; reasons {sorted(set(r for _, r in answers))}")


def plain(n):
    took = []
    for j in range(n):
        code, body, t = post("/v1/mutations", {"collection": "plain", "key": f"k{j % 16}", "op": "put",
                                               "value": {"j": j}})
        assert code == 200, (code, body)
        took.append(t)
    took.sort()
    return took[n // 2] * 1000, took[n * 99 // 100] * 1000


if len(sys.argv) > 2:
    storms(float(sys.argv[2]))
    sys.exit(0)
for i in range(6):
    post(f"/v1/collections/h{i}", {"handler": {"script": HOSTILE}}, method="PUT")
    for v in (1, 2):
        post("/v1/mutations", {"collection": f"h{i}", "key": "k", "op": "put", "value": {"v": v}})
plain(100)
alone = plain(500)
# The storms run in a process of their own, so they do not share this one's GIL.
others = subprocess.Popen([sys.executable, sys.argv[0], URL, "6"])
time.sleep(0.5)
beside = plain(500)
others.wait()
print(f"optimistic p50/p99: alone {alone[0]:.2f}/{alone[1]:.2f} ms; "
      f"beside six hostile scripts {beside[0]:.2f}/{beside[1]:.2f} ms")
