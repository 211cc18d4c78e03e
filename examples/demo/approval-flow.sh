#!/bin/sh
# The approvals flow of `callgate demo`, with curl only:
#   bob's reset of acct_1 is held (202); bob cannot approve it (403); erin cannot (not a
#   reviewer, 403); carol approves and Callgate executes the stored call once; a second
#   approval by dave is recorded and changes nothing.
# Usage: examples/demo/approval-flow.sh [http://127.0.0.1:8080]
set -eu
G=${1:-http://127.0.0.1:8080}
OUT=$(mktemp)
HDR=$(mktemp)
trap 'rm -f "$OUT" "$HDR"' EXIT

token() {
  curl -sf "$G/demo/idp/token" -H 'content-type: application/json' -d "{\"user\":\"$1\"}" |
    sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p'
}

# expect STATUS WHAT curl-args...: runs curl, checks the status, shows the body.
expect() {
  want=$1; what=$2; shift 2
  got=$(curl -s -D "$HDR" -o "$OUT" -w '%{http_code}' "$@")
  if [ "$got" != "$want" ]; then
    echo "FAIL: $what: expected $want, got $got: $(cat "$OUT")" >&2
    exit 1
  fi
  echo "$got  $what"
  echo "     $(head -c 300 "$OUT")"
}

BOB=$(token bob); CAROL=$(token carol); DAVE=$(token dave); ERIN=$(token erin)

expect 202 "bob asks to reset acct_1: held for a finance approver" \
  "$G/billing/reset" -H "Authorization: Bearer $BOB" -H 'content-type: application/json' \
  -d '{"account_id":"acct_1"}'
ID=$(sed -n 's/^[Ll]ocation: \/v1\/calls\/\([^[:space:]]*\).*/\1/p' "$HDR")
[ -n "$ID" ] || { echo "FAIL: no Location header" >&2; exit 1; }
echo "     call id $ID"

expect 403 "bob cannot approve his own call" \
  -X POST "$G/v1/approvals/$ID/approve" -H "Authorization: Bearer $BOB"
expect 403 "erin is not a finance approver" \
  -X POST "$G/v1/approvals/$ID/approve" -H "Authorization: Bearer $ERIN"
expect 200 "carol sees it in her queue" \
  "$G/v1/approvals" -H "Authorization: Bearer $CAROL"
grep -q "$ID" "$OUT" || { echo "FAIL: not in carol's queue" >&2; exit 1; }
expect 200 "carol approves; Callgate executes the stored call" \
  -X POST "$G/v1/approvals/$ID/approve" -H "Authorization: Bearer $CAROL" \
  -H 'content-type: application/json' -d '{"comment":"ticket FIN-7"}'
expect 200 "bob follows his call until it has run" \
  "$G/v1/calls/$ID" -H "Authorization: Bearer $BOB" -H 'Prefer: wait=10'
grep -q '"state":"succeeded"' "$OUT" || { echo "FAIL: the call did not succeed" >&2; exit 1; }
expect 200 "dave approves too: recorded, changes nothing" \
  -X POST "$G/v1/approvals/$ID/approve" -H "Authorization: Bearer $DAVE"
grep -q '"counted":false' "$OUT" || { echo "FAIL: dave's approval counted" >&2; exit 1; }
expect 200 "erin (auditor) reads the call's audit trail" \
  "$G/v1/audit/calls/$ID" -H "Authorization: Bearer $ERIN"
echo "ok: held, reviewed by a different person, executed once ($ID)"
