#!/usr/bin/env bash
# The money path end to end (`ferrobank bench payments`, in-process: payments service ->
# group-commit writer -> outbox relay -> bus -> payment worker -> gateway simulator ->
# settlement) on PostgreSQL with the memory bus, RabbitMQ, and Kafka when a broker
# answers, and on SQLite with the memory bus; plus each broker's own publish-with-confirms
# / consume-with-ack ceiling through the same bus adapter. Writes the "Payments" section
# of BENCHMARKS.md (between its markers; the rest of the file is kept).
#
#   bench/payments.sh [--clients N] [--duration-s S] [--baseline-publishers K]
#                     [--settle-timeout-s T] [--out FILE] [--no-build] [--quiet-wait-s Q]
#
# The same knobs as environment variables: CLIENTS, DURATION_S, BASELINE_PUBLISHERS,
# SETTLE_TIMEOUT_S, OUT, QUIET_WAIT_S. With --quiet-wait-s, each measurement first waits up
# to Q seconds for other compilations (rustc processes) on the machine to finish.
# PostgreSQL: 127.0.0.1:5432 as role ferrobank_test (created like scripts/test.sh does when
# missing), one fresh database per run. RabbitMQ: FERROBANK_TEST_AMQP_URL or the local
# broker; Kafka: FERROBANK_TEST_KAFKA_URL or 127.0.0.1:9092, skipped when nothing answers.
# Every database, queue and topic it creates is removed when it exits, however it exits.
set -euo pipefail

CLIENTS=${CLIENTS:-64}
DURATION_S=${DURATION_S:-15}
BASELINE_PUBLISHERS=${BASELINE_PUBLISHERS:-16}
SETTLE_TIMEOUT_S=${SETTLE_TIMEOUT_S:-180}
QUIET_WAIT_S=${QUIET_WAIT_S:-0}
BUILD=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/BENCHMARKS.md}
COMMAND="bench/payments.sh $*"

while [ $# -gt 0 ]; do
    case "$1" in
        --clients) CLIENTS=$2; shift 2 ;;
        --duration-s) DURATION_S=$2; shift 2 ;;
        --baseline-publishers) BASELINE_PUBLISHERS=$2; shift 2 ;;
        --settle-timeout-s) SETTLE_TIMEOUT_S=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --quiet-wait-s) QUIET_WAIT_S=$2; shift 2 ;;
        -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done
for n in "$CLIENTS" "$DURATION_S" "$BASELINE_PUBLISHERS" "$SETTLE_TIMEOUT_S"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "expected a positive integer, got '$n'" >&2; exit 2; }
done
[[ "$QUIET_WAIT_S" =~ ^[0-9]+$ ]] || { echo "--quiet-wait-s: expected seconds, got '$QUIET_WAIT_S'" >&2; exit 2; }

PG_HOST=127.0.0.1
PG_PORT=5432
PG_ROLE=ferrobank_test
PG_PASSWORD=ferrobank_test
PG_ADMIN_URL="postgres://$PG_ROLE:$PG_PASSWORD@$PG_HOST:$PG_PORT/postgres"
AMQP_URL=${FERROBANK_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
KAFKA_URL=${FERROBANK_TEST_KAFKA_URL:-kafka://127.0.0.1:9092}
BIN="$ROOT/target/release/ferrobank"
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    WORK=$(mktemp -d -p /dev/shm fbpay.XXXXXX)
else
    WORK=$(mktemp -d -t fbpay.XXXXXX)
fi
# SQLite belongs on the disk, where its fsyncs mean something (the bench makes its
# database directory under TMPDIR).
SQLITE_TMP=$(mktemp -d -t fbpay-sqlite.XXXXXX)
SAMPLER_PID=""
DATABASES=()

cleanup() {
    local rc=$?
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
    fi
    for db in "${DATABASES[@]}"; do
        psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
    rm -rf "$WORK" "$SQLITE_TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Background load once a second (epoch, 1-minute load, rustc processes), so the report can
# tell a quiet machine from one where others were compiling during a measurement.
sample_load() {
    while true; do
        printf '%s %s %s\n' "$(date +%s)" "$(cut -d' ' -f1 /proc/loadavg)" "$(pgrep -c -x rustc || true)"
        sleep 1
    done
}

wait_for_quiet() {
    local waited=0
    while pgrep -x rustc >/dev/null && [ "$waited" -lt "$QUIET_WAIT_S" ]; do
        [ "$waited" = 0 ] && log "waiting up to $QUIET_WAIT_S s for other compilations to finish"
        sleep 1
        waited=$((waited + 1))
    done
}

# host:port of a URL answers a TCP connect within 2 s.
answers() {
    local hostport host port
    hostport=$(sed -E 's#^[a-z]+://([^@/]*@)?([^/]+).*#\2#' <<<"$1")
    host=${hostport%:*}
    port=${hostport##*:}
    timeout 2 bash -c "echo > /dev/tcp/$host/$port" 2>/dev/null
}

ensure_pg_role() {
    local sql="DO \$\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
        CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
      END IF; END \$\$;"
    psql -q "$PG_ADMIN_URL" -c 'SELECT 1' >/dev/null 2>&1 && return 0
    psql -q -h "$PG_HOST" -p "$PG_PORT" -d postgres -c "$sql" >/dev/null 2>&1 \
        || psql -q -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -c "$sql" >/dev/null
    psql -q "$PG_ADMIN_URL" -c 'SELECT 1' >/dev/null
}

# A fresh database owned by the test role; prints its URL.
fresh_db() {
    local db="fbpay_${1}_$$"
    psql -q "$PG_ADMIN_URL" -c "CREATE DATABASE $db" >/dev/null
    DATABASES+=("$db")
    echo "postgres://$PG_ROLE:$PG_PASSWORD@$PG_HOST:$PG_PORT/$db"
}

drop_db() {
    psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null
}

if [ "$BUILD" = 1 ]; then
    log "building the release binary (waits for the cargo lock when others build)"
    (cd "$ROOT" && cargo build --release -p ferrobank)
fi
[ -x "$BIN" ] || { echo "missing $BIN (build it or drop --no-build)" >&2; exit 1; }
# The commit the binary was built from, read now: others may commit while this runs.
BUILT_COMMIT=$(cd "$ROOT" && git rev-parse --short=12 HEAD)
BUILT_DIRTY=$(cd "$ROOT" && git status --porcelain --untracked-files=no -- crates Cargo.toml Cargo.lock)
[ "$BUILD" = 1 ] || BUILT_DIRTY="--no-build: HEAD at the start; the binary may be older"
pg_isready -q -h "$PG_HOST" -p "$PG_PORT" || { echo "PostgreSQL is not answering on $PG_HOST:$PG_PORT" >&2; exit 1; }
ensure_pg_role
answers "$AMQP_URL" || { echo "RabbitMQ is not answering at $AMQP_URL" >&2; exit 1; }
KAFKA=0
if answers "$KAFKA_URL"; then KAFKA=1; else log "no Kafka broker at $KAFKA_URL: the Kafka run is skipped"; fi

# Runs `ferrobank bench payments ARGS --json`; writes $WORK/<label>.json with its output,
# the exact command, exit code and time window.
run_bench() {
    local label=$1 started ended rc=0
    shift
    local args=(bench payments --clients "$CLIENTS" --duration-s "$DURATION_S"
        --settle-timeout-s "$SETTLE_TIMEOUT_S" --baseline-publishers "$BASELINE_PUBLISHERS" "$@")
    wait_for_quiet
    started=$(date +%s)
    log "$label: ferrobank ${args[*]}"
    TMPDIR="$SQLITE_TMP" "$BIN" "${args[@]}" --json >"$WORK/$label.bench" 2>"$WORK/$label.err" || rc=$?
    ended=$(date +%s)
    if ! grep -q '^{' "$WORK/$label.bench"; then
        echo "$label: the bench failed:" >&2
        tail -n 20 "$WORK/$label.err" "$WORK/$label.bench" >&2
        exit 1
    fi
    [ "$rc" = 0 ] || log "warning: $label: exit status $rc (failures, payments not final, or ledger verify failed)"
    # The command as printed in the report: the database password is the test role's.
    python3 - "$WORK/$label" "$rc" "$started" "$ended" "ferrobank ${args[*]} --json" <<'PY'
import json, sys
base, rc, started, ended, command = sys.argv[1:]
bench = json.loads(open(base + ".bench").read().strip().splitlines()[-1])
json.dump({"bench": bench, "exit_code": int(rc), "window": [int(started), int(ended)],
           "command": command}, open(base + ".json", "w"))
PY
    log "$label: $(python3 -c 'import json, sys; b = json.load(open(sys.argv[1]))["bench"]; print("%.0f payments/s, p99 %.0f ms, %s, verify %s, broker %s msg/s" % (b["payments_per_s"], b["e2e_p99_ms"], b["statuses"], b["ledger_verify_ok"], (b["baseline"] or {}).get("messages_per_s")))' "$WORK/$label.json")"
}

sample_load >"$WORK/load.log" &
SAMPLER_PID=$!

RUNS=()
# 1. PostgreSQL, memory bus.
URL=$(fresh_db mem)
run_bench pg_memory --database-url "$URL" --bus memory
RUNS+=(pg_memory)
drop_db "fbpay_mem_$$"
# 2. PostgreSQL, RabbitMQ (then the broker's own ceiling).
URL=$(fresh_db rabbit)
run_bench pg_rabbitmq --database-url "$URL" --bus rabbitmq --bus-url "$AMQP_URL"
RUNS+=(pg_rabbitmq)
drop_db "fbpay_rabbit_$$"
# 3. PostgreSQL, Kafka, when a broker answers.
if [ "$KAFKA" = 1 ]; then
    URL=$(fresh_db kafka)
    run_bench pg_kafka --database-url "$URL" --bus kafka --bus-url "$KAFKA_URL"
    RUNS+=(pg_kafka)
    drop_db "fbpay_kafka_$$"
fi
# 4. SQLite (a new database in a temporary directory), memory bus.
run_bench sqlite_memory --bus memory
RUNS+=(sqlite_memory)

# 5. The report: the section between the markers in $OUT, replaced (or appended).
export BENCH_COMMAND="$COMMAND" ROOT BUILT_COMMIT BUILT_DIRTY
export BENCH_EFFECTIVE="bench/payments.sh --clients $CLIENTS --duration-s $DURATION_S --baseline-publishers $BASELINE_PUBLISHERS --settle-timeout-s $SETTLE_TIMEOUT_S"
python3 - "$WORK" "$OUT" "${RUNS[@]}" <<'PY'
import datetime, json, os, subprocess, sys
work, out, *names = sys.argv[1:]
BEGIN, END = "<!-- payments-bench:begin -->", "<!-- payments-bench:end -->"
TARGET_RATE, TARGET_P99_MS = 2000, 250

def load(name):
    return json.load(open(os.path.join(work, name + ".json")))
def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=os.environ["ROOT"]).stdout.strip()
runs = {name: load(name) for name in names}
samples = []
for line in open(os.path.join(work, "load.log")):
    parts = line.split()
    if len(parts) == 3:
        samples.append((int(parts[0]), float(parts[1]), int(parts[2])))
def during(run):
    t0, t1 = run["window"]
    inside = [s for s in samples if t0 <= s[0] <= t1]
    if not inside:
        return {"load1_max": float("nan"), "rustc_max": 0, "rustc_share": 0.0}
    return {"load1_max": max(s[1] for s in inside), "rustc_max": max(s[2] for s in inside),
            "rustc_share": sum(1 for s in inside if s[2] > 0) / len(inside)}
conditions = {name: during(run) for name, run in runs.items()}
busy = [name for name, c in conditions.items() if c["rustc_max"] > 0]

def met(ok):
    return "**met**" if ok else "**not met**"
def num(x, fmt=".0f"):
    return format(x, fmt) if x is not None else "n/a"
def mean(m, name):
    s, c = m.get(name + "_sum"), m.get(name + "_count")
    return s / c if s and c else None
def per_payment(b, name):
    v = b["metrics"].get(name)
    return v / b["completed"] if v is not None and b["completed"] else None
LABELS = {"pg_memory": ("PostgreSQL", "memory"), "pg_rabbitmq": ("PostgreSQL", "RabbitMQ"),
          "pg_kafka": ("PostgreSQL", "Kafka"), "sqlite_memory": ("SQLite", "memory")}

def row(name, run):
    b = run["bench"]
    db, bus = LABELS[name]
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(b["statuses"].items()))
    cpu = b["process_cpu_s"] / b["window_s"] if b["process_cpu_s"] is not None else None
    machine = 100 * b["machine_busy"] if b["machine_busy"] is not None else None
    verify = "ok" if b["ledger_verify_ok"] else "**FAILED**"
    return (f"| {db} | {bus} | **{b['payments_per_s']:.0f}** | {b['completed_in_window_per_s']:.0f} | "
            f"{b['created_per_s']:.0f} | {b['e2e_p50_ms']:.0f} | {b['e2e_p99_ms']:.0f} | {b['e2e_p999_ms']:.0f} | "
            f"{b['create_p99_ms']:.1f} | {statuses}{'' if b['drained'] else ' (NOT all final)'} | "
            f"{num(mean(b['metrics'], 'ferrobank_payments_batch_size'), '.1f')} | "
            f"{num(per_payment(b, 'ferrobank_outbox_published_total'), '.1f')} | "
            f"{num(cpu, '.2f')} | {num(machine)}% | {verify} |")

def baseline_row(name, run):
    b = run["bench"]
    x = b["baseline"]
    ratio = b["ratio_to_broker"]
    return (f"| {LABELS[name][1]} | {x['publishers']} | **{x['messages_per_s']:.0f}** | "
            f"{x['published_per_s']:.0f} | {x['p50_ms']:.2f} | {x['p99_ms']:.2f} | "
            f"{x['confirm_p50_ms']:.2f} | {x['confirm_p99_ms']:.2f} | {x['publish_failed']} | "
            f"{b['payments_per_s']:.0f} | **{num(ratio, '.3f')}** |")

meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo"))
ram_gb = int(meminfo["MemTotal"].split()[0]) / 1024 / 1024
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
commit, dirty = os.environ["BUILT_COMMIT"], os.environ["BUILT_DIRTY"]
pg_version = sh("psql", "-tAc", "SHOW server_version", "postgres://ferrobank_test:ferrobank_test@127.0.0.1:5432/postgres")
pg_sync = sh("psql", "-tAc", "SELECT current_setting('synchronous_commit') || ', fsync ' || current_setting('fsync')",
             "postgres://ferrobank_test:ferrobank_test@127.0.0.1:5432/postgres")
rabbit_version = sh("rabbitmqctl", "-q", "version") or "unknown version"
first = next(iter(runs.values()))["bench"]
cores = first["cores"]
rabbit = runs.get("pg_rabbitmq")
target_rows = ""
if rabbit:
    b = rabbit["bench"]
    target_rows = (f"| >= {TARGET_RATE:,} payments/s end to end, PostgreSQL + RabbitMQ, simulator at 0 ms | "
                   f"{b['payments_per_s']:.0f} payments/s | {met(b['payments_per_s'] >= TARGET_RATE)} |\n"
                   f"| p99 created-to-completed < {TARGET_P99_MS} ms, PostgreSQL + RabbitMQ | "
                   f"{b['e2e_p99_ms']:.0f} ms | {met(b['e2e_p99_ms'] < TARGET_P99_MS)} |\n")
baselines = [baseline_row(n, r) for n, r in runs.items() if r["bench"]["baseline"]]
commands = "\n".join(f"    {r['command']}" for r in runs.values())
failures = {n: r["bench"]["first_error"] for n, r in runs.items() if r["bench"]["first_error"]}

section = f"""{BEGIN}
## Payments: the money path end to end

Produced by `{os.environ['BENCH_COMMAND'].strip()}` (that is, `{os.environ['BENCH_EFFECTIVE']}`) on
{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, binary built from commit `{commit}`{(' (with uncommitted changes under crates/)' if not dirty.startswith('--no-build') else ' (' + dirty + ')') if dirty else ''}; a run of its own,
separate from the figures above. Re-run the command to reproduce it. Each row is one
`ferrobank bench payments` process:

```
{commands}
```

**Machine:** {cores} CPU ({cpu}), {ram_gb:.1f} GiB RAM; PostgreSQL {pg_version} on 127.0.0.1
(synchronous_commit {pg_sync}, stock configuration), RabbitMQ {rabbit_version} (quorum queues, the
adapter's default){', a Kafka-protocol broker on 127.0.0.1' if 'pg_kafka' in runs else ''}. The app, its load generator, the payment gateway simulator,
PostgreSQL and the broker all share these {cores} CPUs.

**What runs:** the whole money path in one process, as `ferrobank up` wires it (authentication,
edge and mesh off): `PaymentService::create` called in-process (no HTTP: the API layer is not
measured) -> risk check -> hold + payment row + `transaction.created` outbox event in one
transaction (group-commit writer) -> outbox relay -> bus -> payment worker -> charge at the
built-in gateway simulator over loopback HTTP (latency 0 ms) -> post of the hold, `completed`.
{first['clients']} clients, each with one create in flight and a debtor account of its own (one customer
each, funded with 100,000,000.00 EUR, never-overdrawn), 1.00 EUR per payment to an external
IBAN, for {first['window_s']:.0f} s; then the bench waits (at most the settle timeout) until no payment is
pending or processing, and reads every payment back. Risk rules: the defaults with the hourly
count (`[risk] velocity.max_count`) and every EUR amount limit raised out of reach, so that no
payment is held for review (blocked countries and parties unchanged). Each run uses a fresh
database and a fresh bus prefix; the broker's queues/topics are deleted afterwards.

**Definitions.** *payments/s end to end* = payments completed / time from the start of the load
to the last completion (includes draining the backlog left when the load stops). *completed in
window/s* = payments completed before the load stopped / load duration. *created/s* = creates
committed / load duration. *created-to-completed* = `updated_at_ms - created_at_ms` of each
completed payment (the app's own millisecond stamps: creation commit to settlement commit).
*create p99* = the `create` call as the client sees it. *batch* = mean changes per payments-writer
transaction (`ferrobank_payments_batch_size`). *events/payment* = outbox events the relay
published per completed payment. *CPU* = this process's CPU time in the load window (app and load
generator, not PostgreSQL or the broker), and the whole machine's busy share.

| database | bus | payments/s end to end | completed in window/s | created/s | created-to-completed p50 ms | p99 ms | p99.9 ms | create p99 ms | final statuses | batch | events/payment | process CPU (cores) | machine busy | ledger verify |
|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|
""" + "\n".join(row(n, r) for n, r in runs.items()) + f"""

### The broker's own ceiling

Right after each broker run, the same bench process measures the broker through the same bus
adapter (`EventBus::publish`, which waits for the publisher confirm, and `subscribe` + `ack`),
under a fresh prefix: K concurrent publishers, one consumer acking, CloudEvents of about 1 KiB
(like `transaction.created`), for the same duration. *messages/s* = messages consumed during the
window / window; publish-to-consume latency from before the `publish` call to the consumer's
receipt. *ratio* = the money path's payments/s end to end / the broker's messages/s.

| broker | publishers | messages/s consumed | published/s | publish-to-consume p50 ms | p99 ms | confirm p50 ms | confirm p99 ms | publish failures | payments/s (same broker) | ratio |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
""" + "\n".join(baselines) + f"""

### Targets (from the issue)

| target | measured | |
|---|---|---|
{target_rows}""" + ("".join(f"\nFirst failure in {n}: {e}\n" for n, e in failures.items())) + f"""
### Conditions

The script samples the 1-minute load average and the number of running `rustc` processes once a
second. {('Other compilation was running during: ' + ', '.join(busy) + '. Those figures are lower, and their tails longer, than on a quiet machine.') if busy else 'No other compilation was running during any measurement.'}

| run | max load1 (includes the benchmark itself) | max rustc processes | share of seconds with rustc running |
|---|---:|---:|---:|
""" + "\n".join(f"| {n} | {c['load1_max']:.2f} | {c['rustc_max']} | {100 * c['rustc_share']:.0f}% |"
                for n, c in conditions.items()) + f"""
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
summary = ", ".join(f"{n} {r['bench']['payments_per_s']:.0f}/s" for n, r in runs.items())
print(f"wrote {out}: {summary}")
PY
