#!/usr/bin/env bash
# MCP `tools/call` throughput through Callgate vs directly to the same upstream MCP server, on
# loopback, with the same load generator in the same run.
#
#   benches/mcp-load.sh [seconds] [connections] [stateful|stateless]
#
# The upstream is the official TypeScript SDK server of the tests (tests/mcp/server.mjs, streamable
# HTTP with JSON responses), its `lookup` tool returning a record with an email and an IBAN. Mode
# "stateful" (default): one SDK server per MCP session, as long-running servers are deployed;
# direct calls use one session, as Callgate does upstream. Mode "stateless": a fresh SDK server
# per request, as in the SDK's stateless example.
#
# Through Callgate: API-key authentication at /mcp, the 2026-07-28 stateless request (no session,
# `Mcp-Method`/`Mcp-Name` checked against the body), a Cedar policy with an argument condition,
# schema validation, the audit record fsynced before forwarding and the response recorded,
# masking of the result, and Callgate's own secret credential to the upstream.
#
# Needs wrk (apt-get install wrk) and node. Prints both results and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-32}
mode=${3:-stateful}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
cargo build --release -q
bin=$PWD/target/release/callgate
[ -d tests/mcp/node_modules ] || npm ci --prefix tests/mcp --silent
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

up_port=18191
gw_port=18190
node tests/mcp/server.mjs $up_port - "$mode" >/dev/null &
up_path=/mcp
read -r key hash < <("$bin" keygen | awk '/^key:/{k=$2} /^hash:/{h=$2} END{print k, h}')
echo "upstream-secret" > "$work/ledger-token"
mkdir -p "$work/policies"
cat > "$work/callgate.yaml" <<YAML
listen: 127.0.0.1:$gw_port
logging: {level: warn}
identity:
  api_keys: [{id: bench, hash: "$hash", subject: bench, groups: [support]}]
policies: [policies]
masking:
  profiles:
    pii:
      rules:
        - {keys: [password, api_token], strategy: redact}
        - {detect: [email, iban], strategy: partial, keep: 4}
mcp:
  servers:
    ledger:
      url: http://127.0.0.1:$up_port$up_path
      credential: {type: secret, file: ledger-token, header: Authorization, prefix: "Bearer "}
      mask: pii
YAML
cat > "$work/policies/bench.cedar" <<'CEDAR'
permit (principal in Callgate::Group::"support", action == Callgate::Action::"ledger.lookup", resource)
when { context.arguments.account like "acct_*" };
CEDAR

for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$up_port/" && break; sleep 0.1; done
mcp_post() { curl -s -D "$work/headers" -X POST "http://127.0.0.1:$up_port$up_path" \
  -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \
  -H 'mcp-protocol-version: 2025-11-25' -H 'authorization: Bearer upstream-secret' "$@"; }
session_header=
if [ "$mode" = stateful ]; then
  mcp_post --data '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"wrk","version":"1"}}}' >/dev/null
  sid=$(awk -F': ' 'tolower($1)=="mcp-session-id"{print $2}' "$work/headers" | tr -d '\r')
  [ -n "$sid" ] || { echo "the upstream opened no session" >&2; exit 1; }
  mcp_post -H "mcp-session-id: $sid" --data '{"jsonrpc":"2.0","method":"notifications/initialized"}' >/dev/null
  session_header="wrk.headers[\"Mcp-Session-Id\"] = \"$sid\""
fi
(cd "$work" && exec "$bin" serve --config callgate.yaml 2>"$work/gateway.log") &
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$gw_port/readyz" && break; sleep 0.1; done

call='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"%s","arguments":{"account":"acct_42"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"wrk","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}}}}'
# Directly: the upstream's protocol version, in the session opened above (none when stateless).
# shellcheck disable=SC2059
direct_body=$(printf "$call" lookup)
# shellcheck disable=SC2059
via_body=$(printf "$call" ledger.lookup)
cat > "$work/direct.lua" <<LUA
wrk.method = "POST"
wrk.body = '$direct_body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2025-11-25"
wrk.headers["Authorization"] = "Bearer upstream-secret"
$session_header
LUA
cat > "$work/via.lua" <<LUA
wrk.method = "POST"
wrk.body = '$via_body'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
wrk.headers["Mcp-Method"] = "tools/call"
wrk.headers["Mcp-Name"] = "ledger.lookup"
wrk.headers["X-API-Key"] = "$key"
LUA

# Both must answer with the record (raw directly, masked through Callgate), or the run means nothing.
out=$(mcp_post ${sid:+-H "mcp-session-id: $sid"} --data "$direct_body")
grep -q 'grace@example.com' <<<"$out" || { echo "the upstream answered: $out" >&2; exit 1; }
out=$(curl -s -X POST "http://127.0.0.1:$gw_port/mcp" -H 'content-type: application/json' \
  -H 'accept: application/json, text/event-stream' -H 'mcp-protocol-version: 2026-07-28' \
  -H 'mcp-method: tools/call' -H 'mcp-name: ledger.lookup' -H "x-api-key: $key" --data "$via_body")
grep -q 'g\*\*\*\*@example.com' <<<"$out" && ! grep -q 'grace@example.com' <<<"$out" ||
  { echo "Callgate answered: $out" >&2; exit 1; }

run() { wrk -t2 -c"$conns" -d"${secs}s" -s "$2" "$1" | awk '/Latency/{l=$2} /Requests\/sec/{r=$2} /Non-2xx/{e=$4} END{print r; print "avg latency", l; if (e) print "non-2xx", e}'; }
echo "== direct   http://127.0.0.1:$up_port$up_path (TypeScript SDK server, $mode)"
direct=$(run "http://127.0.0.1:$up_port$up_path" "$work/direct.lua"); echo "$direct"
echo "== callgate http://127.0.0.1:$gw_port/mcp"
via=$(run "http://127.0.0.1:$gw_port/mcp" "$work/via.lua"); echo "$via"
if grep -q non-2xx <<<"$direct$via"; then echo "some calls failed; the figures are not valid" >&2; exit 1; fi
d=$(echo "$direct" | head -1); v=$(echo "$via" | head -1)
echo "ratio callgate/direct: $(awk -v a="$v" -v b="$d" 'BEGIN{printf "%.2f", a/b}')"
