#!/usr/bin/env python3
"""What forwarding costs in cluster mode: two `sluice serve --redis` members
on one PostgreSQL database; sequential synchronous mutations sent to member
A, alternately for documents A owns (decided there) and for documents B owns
(forwarded through B's partition stream and answered through A's inbox).

    python3 bench/cluster_forwarding.py --sluice target/release/sluice \\
        --postgres postgres://sluice@127.0.0.1:5432/bench --redis redis://127.0.0.1:6379

The database should be empty (a fresh one per run). Prints p50/p90/p99 of
each kind; the difference is the forwarding cost.
"""
import argparse, http.client, json, os, socket, subprocess, sys, tempfile, time


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    return port


def start(args, port, prefix, log):
    env = dict(os.environ, SLUICE_CLUSTER__PREFIX=prefix)
    child = subprocess.Popen(
        [args.sluice, "serve", "--listen", f"127.0.0.1:{port}", "--store", args.postgres,
         "--history", args.postgres, "--redis", args.redis],
        env=env, stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port); c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return child
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"member on {port} did not come up")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sluice", required=True)
    p.add_argument("--postgres", required=True)
    p.add_argument("--redis", required=True)
    p.add_argument("--rounds", type=int, default=2000)
    args = p.parse_args()
    prefix = f"fwd{int(time.time())}:"
    log = tempfile.NamedTemporaryFile(prefix="sluice-forwarding-", suffix=".log", delete=False)
    ports = [free_port(), free_port()]
    members = [start(args, port, prefix, log) for port in ports]
    try:
        conn = http.client.HTTPConnection("127.0.0.1", ports[0])

        def post(body):
            conn.request("POST", "/v1/mutations", json.dumps(body), {"Content-Type": "application/json"})
            r = conn.getresponse(); data = r.read()
            if r.status != 200:
                sys.exit(f"{r.status}: {data!r}")

        def forwarded():
            conn.request("GET", "/metrics"); text = conn.getresponse().read().decode()
            for line in text.splitlines():
                if line.startswith("sluice_mutations_forwarded_total "):
                    return float(line.split()[1])
            return 0.0

        # Wait until both members own partitions.
        for _ in range(200):
            conn.request("GET", "/v1/cluster"); view = json.loads(conn.getresponse().read())
            if len(view["members"]) == 2 and all(m["partitions"] for m in view["members"]):
                break
            time.sleep(0.05)
        # Which documents are A's: a first write, and whether it was forwarded.
        local, remote, i = [], [], 0
        while len(local) < 20 or len(remote) < 20:
            key = f"k{i}"; i += 1
            before = forwarded()
            post({"id": f"w-{key}", "client": "bench", "collection": "fwd", "key": key, "op": "put", "value": {"n": 0}})
            (remote if forwarded() > before else local).append(key)
        local, remote = local[:20], remote[:20]
        latencies = {"local": [], "forwarded": []}
        n = 0
        for r in range(args.rounds):
            for kind, keys in (("local", local), ("forwarded", remote)):
                n += 1
                body = {"id": f"m{n}", "client": "bench", "collection": "fwd", "key": keys[r % len(keys)],
                        "op": "patch", "value": {"n": n}}
                t = time.perf_counter(); post(body)
                latencies[kind].append((time.perf_counter() - t) * 1000)
        for kind, xs in latencies.items():
            xs.sort()
            print(f"{kind:9} n={len(xs)} p50={xs[len(xs) // 2]:.3f} ms "
                  f"p90={xs[len(xs) * 9 // 10]:.3f} ms p99={xs[len(xs) * 99 // 100]:.3f} ms")
    finally:
        for m in members:
            m.terminate(); m.wait()


if __name__ == "__main__":
    main()
