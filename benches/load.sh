#!/usr/bin/env bash
# Throughput through Callgate vs a direct connection to the same upstream, on loopback, with the
# same load generator in the same run. Allow path: API-key authentication, a Cedar decision with
# argument conditions, schema validation, a 1 KiB JSON body re-serialized and forwarded.
#
#   benches/load.sh [seconds] [connections]
#
# Needs wrk (apt-get install wrk). Prints both results and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-32}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
cargo build --release -q
bin=target/release/callgate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

up_port=18181
gw_port=18180
source benches/common.sh
bench_setup "$bin" "$work" $up_port $gw_port
$bin serve --config "$work/callgate.yaml" &
sleep 1
check=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$gw_port/quota/adjust" \
  -H "X-API-Key: $key" -H 'content-type: application/json' -d "{\"account_id\":\"acct_$pad\",\"delta\":5}")
[ "$check" = 200 ] || { echo "the gateway answered $check, not 200" >&2; exit 1; }

run() { wrk -t2 -c"$conns" -d"${secs}s" -s "$work/post.lua" "$1" | awk '/Latency/{l=$2} /Requests\/sec/{r=$2} END{print r; print "avg latency", l}'; }
echo "== direct  http://127.0.0.1:$up_port"; direct=$(run "http://127.0.0.1:$up_port/quota/adjust"); echo "$direct"
echo "== callgate http://127.0.0.1:$gw_port"; via=$(run "http://127.0.0.1:$gw_port/quota/adjust"); echo "$via"
d=$(echo "$direct" | head -1); v=$(echo "$via" | head -1)
echo "ratio callgate/direct: $(awk -v a="$v" -v b="$d" 'BEGIN{printf "%.2f", a/b}')"
