# Shared by the load scripts (sourced, not run): starts the demo's bank-ops upstream and writes
# a gateway config, a policy and a wrk script into $work for the `quota.adjust` call with a
# 1 KiB JSON body.
#
#   bench_setup BIN WORK UP_PORT GW_PORT   sets: key, pad
bench_setup() {
  local bin=$1 work=$2 up_port=$3 gw_port=$4 hash
  "$bin" demo upstream --listen "127.0.0.1:$up_port" 2>/dev/null &
  read -r key hash < <("$bin" keygen | awk '/^key:/{k=$2} /^hash:/{h=$2} END{print k, h}')
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
  pad=$(printf 'x%.0s' $(seq 1 990))
  cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"account_id":"acct_$pad","delta":5}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "$key"
LUA
}
