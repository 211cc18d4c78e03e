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
$bin demo upstream --listen 127.0.0.1:$up_port 2>/dev/null &
read -r key hash < <($bin keygen | awk '/^key:/{k=$2} /^hash:/{h=$2} END{print k, h}')
mkdir -p "$work/policies"
cat > "$work/callgate.yaml" <<YAML
listen: 127.0.0.1:$gw_port
logging: {level: warn}
identity:
  api_keys: [{id: bench, hash: "$hash", subject: bench, groups: [billing-ops]}]
upstreams: {bank-ops: {url: "http://127.0.0.1:$up_port"}}
policies: [policies]
functions:
  - name: quota.adjust
    upstream: bank-ops
    route: POST /quota/adjust
    arguments:
      type: object
      properties: {account_id: {type: string}, delta: {type: integer}}
      required: [account_id, delta]
      additionalProperties: false
YAML
cat > "$work/policies/bench.cedar" <<'CEDAR'
permit (principal in Callgate::Group::"billing-ops", action == Callgate::Action::"quota.adjust", resource)
when { context.arguments.account_id like "acct_*" && context.arguments.delta >= -100 && context.arguments.delta <= 100 };
CEDAR
$bin serve --config "$work/callgate.yaml" &
sleep 1

pad=$(printf 'x%.0s' $(seq 1 990))
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"account_id":"acct_$pad","delta":5}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "$key"
LUA
check=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$gw_port/quota/adjust" \
  -H "X-API-Key: $key" -H 'content-type: application/json' -d "{\"account_id\":\"acct_$pad\",\"delta\":5}")
[ "$check" = 200 ] || { echo "the gateway answered $check, not 200" >&2; exit 1; }

run() { wrk -t2 -c"$conns" -d"${secs}s" -s "$work/post.lua" "$1" | awk '/Latency/{l=$2} /Requests\/sec/{r=$2} END{print r; print "avg latency", l}'; }
echo "== direct  http://127.0.0.1:$up_port"; direct=$(run "http://127.0.0.1:$up_port/quota/adjust"); echo "$direct"
echo "== callgate http://127.0.0.1:$gw_port"; via=$(run "http://127.0.0.1:$gw_port/quota/adjust"); echo "$via"
d=$(echo "$direct" | head -1); v=$(echo "$via" | head -1)
echo "ratio callgate/direct: $(awk -v a="$v" -v b="$d" 'BEGIN{printf "%.2f", a/b}')"
