#!/usr/bin/env bash
# Throughput through Callgate vs a direct connection to the same upstream, on loopback, with the
# same load generator in the same run. Allow path: API-key authentication, a Cedar decision with
# argument conditions, schema validation, the audit record, a 1 KiB JSON body re-serialized and
# forwarded. A third path is the ceiling: a proxy that governs nothing, built on the same stack
# (crates/callgate-gateway/examples/bare_proxy.rs), so the cost of proxying at all on this
# machine is told apart from the cost of governing. The three alternate three times; medians.
#
#   benches/load.sh [seconds] [connections]
#
# Needs wrk (apt-get install wrk). Prints every run, the medians and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-32}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
cargo build --release -q
cargo build --release -q -p callgate-gateway --example bare_proxy
bin=target/release/callgate
bare=target/release/examples/bare_proxy
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

up_port=18181
gw_port=18180
bare_port=18182
source benches/common.sh
bench_setup "$bin" "$work" $up_port $gw_port
$bin serve --config "$work/callgate.yaml" &
sleep 1
check=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$gw_port/quota/adjust" \
  -H "X-API-Key: $key" -H 'content-type: application/json' -d "{\"account_id\":\"acct_$pad\",\"delta\":5}")
[ "$check" = 200 ] || { echo "the gateway answered $check, not 200" >&2; exit 1; }

$bare "127.0.0.1:$bare_port" "http://127.0.0.1:$up_port" &

run() { wrk -t2 -c"$conns" -d"${secs}s" -s "$work/post.lua" "$1" | awk '/Requests\/sec/{print $2}'; }
directs=(); bares=(); vias=()
for i in 1 2 3; do
  directs+=("$(run "http://127.0.0.1:$up_port/quota/adjust")")
  bares+=("$(run "http://127.0.0.1:$bare_port/quota/adjust")")
  vias+=("$(run "http://127.0.0.1:$gw_port/quota/adjust")")
  echo "run $i: direct ${directs[-1]}  bare proxy ${bares[-1]}  callgate ${vias[-1]} req/s"
done
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
d=$(median "${directs[@]}"); b=$(median "${bares[@]}"); v=$(median "${vias[@]}")
echo "medians: direct $d  bare proxy $b  callgate $v req/s"
awk -v d="$d" -v b="$b" -v v="$v" 'BEGIN{printf "ratio callgate/direct: %.2f   bare proxy/direct: %.2f   callgate/bare proxy: %.2f\n", v/d, b/d, v/b}'
