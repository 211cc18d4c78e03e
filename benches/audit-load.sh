#!/usr/bin/env bash
# Gateway throughput with the audit log on vs off, same load, same run. The gateway has no
# switch to turn audit off (a call is never forwarded without its record), so "off" is this same
# source built in a separate work tree with benches/audit-off.patch applied: `Audit::call`
# returns at once and `Audit::response` records nothing. Everything else (authentication,
# policy, schema, masking checks, the log writer idling) is the same code. Runs alternate
# off/on three times each and the medians are compared.
#
#   benches/audit-load.sh [seconds] [connections]
#
# Needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-32}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
cargo build --release -q
on=$PWD/target/release/callgate
# The "off" tree: HEAD plus any uncommitted change, plus the patch. Kept between runs so only
# what changed is rebuilt.
base_dir=target/audit-off
[ -d "$base_dir/.git" ] || [ -f "$base_dir/.git" ] || git worktree add -f --detach "$base_dir" HEAD >/dev/null
git -C "$base_dir" checkout -q -f --detach "$(git rev-parse HEAD)"
git -C "$base_dir" reset -q --hard
git diff HEAD > "$base_dir/.uncommitted.diff"
[ -s "$base_dir/.uncommitted.diff" ] && git -C "$base_dir" apply "$PWD/$base_dir/.uncommitted.diff"
git -C "$base_dir" apply "$PWD/benches/audit-off.patch"
(cd "$base_dir" && CARGO_TARGET_DIR=target cargo build --release -q)
off=$PWD/$base_dir/target/release/callgate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

up_port=18181
gw_port=18180
source benches/common.sh
bench_setup "$on" "$work" $up_port $gw_port
cp "$work/callgate.yaml" "$work/callgate-off.yaml"

measure() { # binary config -> sets $result
  "$1" serve --config "$2" &
  local pid=$!
  for _ in $(seq 50); do
    curl -s -m 1 -o /dev/null "http://127.0.0.1:$gw_port/healthz" && break
    sleep 0.2
  done
  local code
  code=$(curl -s -m 5 -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$gw_port/quota/adjust" \
    -H "X-API-Key: $key" -H 'content-type: application/json' -d "{\"account_id\":\"acct_$pad\",\"delta\":5}")
  [ "$code" = 200 ] || { echo "$1 answered $code, not 200" >&2; kill $pid; exit 1; }
  result=$(wrk -t2 -c"$conns" -d"${secs}s" -s "$work/post.lua" "http://127.0.0.1:$gw_port/quota/adjust" \
    | awk '/Requests\/sec/{print $2}')
  kill -TERM $pid; wait $pid 2>/dev/null || true
}
offs=(); ons=()
for i in 1 2 3; do
  measure "$off" "$work/callgate-off.yaml"; offs+=("$result")
  measure "$on" "$work/callgate.yaml"; ons+=("$result")
done
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
mo=$(median "${offs[@]}"); mn=$(median "${ons[@]}")
echo "audit off (patched):            ${offs[*]} -> median $mo req/s"
echo "audit on:                       ${ons[*]} -> median $mn req/s"
echo "ratio on/off: $(awk -v a="$mn" -v b="$mo" 'BEGIN{printf "%.2f", a/b}')"
records=$($on audit --config "$work/callgate.yaml" verify | head -1)
echo "log after the runs: $records"
