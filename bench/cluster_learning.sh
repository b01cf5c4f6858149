#!/usr/bin/env bash
# Collaborative filtering, measured: the rails trace replayed with each
# client's mutations sent to one of three processes (by a hash of the
# client), against
#   one        one process receiving everything,
#   apart      three processes on one database, no --redis (nothing shared
#              but the store: each predicts from what it decided),
#   cluster    three members of a cluster (--redis: each document decided,
#              scored and learned by its partition's owner).
# Prints one summary line per setting (AUC, calibration error, ...).
#
#   bench/cluster_learning.sh target/release/sluice postgres://sluice@127.0.0.1:5432/postgres redis://127.0.0.1:6379
#
# The PostgreSQL URL is an administrative one: a fresh database is made per
# setting. Extra environment (SLUICE_PREDICTOR__USE_VERSION_CACHE=false, ...)
# reaches every process.
set -euo pipefail
SLUICE="$1" ADMIN="$2" REDIS="$3"
TRACE="${TRACE:-$(dirname "$0")/../../shared/traces/rails.trace.jsonl.gz}"
LABELS="${LABELS:-${TRACE%.trace.jsonl.gz}.labels.jsonl.gz}"
OUT="$(mktemp -d /tmp/sluice-cluster-learning.XXXXXX)"
PIDS=()
PREFIX="unused:"
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
fresh_db() {
  local name="learn_$1_$(date +%s)_$RANDOM"
  psql "$ADMIN" -qc "CREATE DATABASE $name" >/dev/null
  echo "${ADMIN%/*}/$name"
}
serve() { # DB PORT [ARGS...]
  local db="$1" port="$2"
  shift 2
  SLUICE_CLUSTER__PREFIX="$PREFIX" "$SLUICE" serve --listen "127.0.0.1:$port" --store "$db" --history "$db" "$@" \
    >>"$OUT/serve.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return 0
    sleep 0.05
  done
  echo "sluice on $port did not come up (see $OUT/serve.log)" >&2
  return 1
}
run() { # NAME URLS
  "$SLUICE" replay --trace "$TRACE" --labels "$LABELS" --handler automerge --url "$2" \
    --out "$OUT/$1.jsonl" --quiet >/dev/null
  python3 - "$1" "$OUT/$1.summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[2]))
print(f"{sys.argv[1]:8} mutations {s['mutations']} conflicts {s['conflicts']} AUC {s['auc']:.4f} "
      f"log loss {s['log_loss']:.4f} Brier {s['brier']:.4f} calibration error {s['expected_calibration_error']:.4f} "
      f"throughput {s['throughput']:.0f}/s p50 {s['latency_p50_ms']:.1f} ms p99 {s['latency_p99_ms']:.1f} ms "
      f"label mismatches {s['label_mismatches']}")
PY
  cleanup; PIDS=()
}

db="$(fresh_db one)"; p="$(free_port)"; serve "$db" "$p"
run one "http://127.0.0.1:$p"

db="$(fresh_db apart)"; urls=()
for _ in 1 2 3; do p="$(free_port)"; serve "$db" "$p"; urls+=("http://127.0.0.1:$p"); done
run apart "$(IFS=,; echo "${urls[*]}")"

db="$(fresh_db cluster)"; urls=(); PREFIX="learn$(date +%s)$RANDOM:"
for _ in 1 2 3; do p="$(free_port)"; serve "$db" "$p" --redis "$REDIS"; urls+=("http://127.0.0.1:$p"); done
sleep 2
run cluster "$(IFS=,; echo "${urls[*]}")"
echo "results and logs: $OUT"
