#!/usr/bin/env bash
# ferrobank over HTTP against the raw SQL rate of one transfer per transaction (pgbench),
# in one run, on one machine, at one concurrency; then ferrobank on SQLite, and the
# hot-account variant everywhere. Writes BENCHMARKS.md from the figures it measured.
#
#   bench/ledger-vs-pgbench.sh [--clients N] [--duration-s S] [--accounts A]
#                              [--hot-accounts K] [--out FILE] [--no-build]
#                              [--quiet-wait-s W]
#
# The same knobs as environment variables: CLIENTS, DURATION_S, ACCOUNTS, HOT_ACCOUNTS,
# OUT, QUIET_WAIT_S. With --quiet-wait-s, each measurement first waits up to W seconds for
# other compilations (rustc processes) on the machine to finish. PostgreSQL: 127.0.0.1:5432, trust auth, user root (PGHOST/PGPORT/PGUSER override).
# Every database and process it creates is removed when it exits, however it exits.
set -euo pipefail

CLIENTS=${CLIENTS:-64}
DURATION_S=${DURATION_S:-20}
ACCOUNTS=${ACCOUNTS:-1000}
HOT_ACCOUNTS=${HOT_ACCOUNTS:-4}
QUIET_WAIT_S=${QUIET_WAIT_S:-0}
BUILD=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/BENCHMARKS.md}
COMMAND="bench/ledger-vs-pgbench.sh $*"

while [ $# -gt 0 ]; do
    case "$1" in
        --clients) CLIENTS=$2; shift 2 ;;
        --duration-s) DURATION_S=$2; shift 2 ;;
        --accounts) ACCOUNTS=$2; shift 2 ;;
        --hot-accounts) HOT_ACCOUNTS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --quiet-wait-s) QUIET_WAIT_S=$2; shift 2 ;;
        -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done
for n in "$CLIENTS" "$DURATION_S" "$ACCOUNTS" "$HOT_ACCOUNTS"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "expected a positive integer, got '$n'" >&2; exit 2; }
done
[[ "$QUIET_WAIT_S" =~ ^[0-9]+$ ]] || { echo "--quiet-wait-s: expected seconds, got '$QUIET_WAIT_S'" >&2; exit 2; }
[ "$ACCOUNTS" -ge 2 ] || { echo "--accounts: a transfer needs at least 2" >&2; exit 2; }

export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-root}
PG_URL="postgres://$PGUSER@$PGHOST:$PGPORT"
FB_DB="fbbench_$$"
PGB_DB="fbbench_pgb_$$"
BIN="$ROOT/target/release/ferrobank"
# Logs, pgbench's transaction log and results go to tmpfs when there is one: appending them
# on the database's ext4 disk ties them into every WAL fsync (one journal) and puts stalls
# into the latency tails that are the file system's, not ferrobank's or PostgreSQL's.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    WORK=$(mktemp -d -p /dev/shm fbbench.XXXXXX)
else
    WORK=$(mktemp -d -t fbbench.XXXXXX)
fi
# The SQLite database itself belongs on the disk, where its fsyncs mean something.
SQLITE_DIR=$(mktemp -d -t fbbench-sqlite.XXXXXX)
SERVER_PID=""
SAMPLER_PID=""
# Server start-up and the account opening are bounded too: nothing waits forever.
STARTUP_TIMEOUT_S=60

cleanup() {
    local rc=$?
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
    fi
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    dropdb --if-exists "$FB_DB" 2>/dev/null || true
    dropdb --if-exists "$PGB_DB" 2>/dev/null || true
    rm -rf "$WORK" "$SQLITE_DIR"
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

if [ "$BUILD" = 1 ]; then
    log "building the release binary (waits for the cargo lock when others build)"
    (cd "$ROOT" && cargo build --release -p ferrobank)
fi
[ -x "$BIN" ] || { echo "missing $BIN (build it or drop --no-build)" >&2; exit 1; }
command -v pgbench >/dev/null || { echo "pgbench not found" >&2; exit 1; }
pg_isready -q || { echo "PostgreSQL is not answering on $PGHOST:$PGPORT" >&2; exit 1; }

# Starts `ferrobank serve --migrate` on a kernel-chosen port; sets SERVER_PID and URL.
start_server() {
    local name=$1
    shift
    # The services alone: no edge, no sidecar (the mesh is not what is measured).
    FERROBANK_MESH__ENABLED=false \
        "$BIN" serve accounts identity --migrate --listen 127.0.0.1:0 "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
    SERVER_PID=$!
    local waited=0
    until grep -q '^ferrobank is up on ' "$WORK/$name.out" 2>/dev/null; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null || [ "$waited" -ge $((STARTUP_TIMEOUT_S * 10)) ]; then
            echo "ferrobank did not start; its log:" >&2
            tail -20 "$WORK/$name.log" >&2
            exit 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    URL=$(sed -n 's/^ferrobank is up on \(http:[^ ]*\).*/\1/p' "$WORK/$name.out")
    log "$name: ferrobank (pid $SERVER_PID) is up on $URL"
}

# Peak resident set of the server so far, in kB.
server_peak_rss_kb() {
    awk '/^VmHWM:/ { print $2 }' "/proc/$SERVER_PID/status"
}

stop_server() {
    kill -TERM "$SERVER_PID"
    local rc=0
    wait "$SERVER_PID" || rc=$?
    SERVER_PID=""
    [ "$rc" = 0 ] || log "warning: ferrobank exited with status $rc after SIGTERM"
}

# Runs `ferrobank bench ledger --json`; writes $WORK/<label>.json with the bench output,
# the server's peak RSS and batch metrics, and the background load before and after.
run_ledger_bench() {
    local label=$1 hot=$2 started ended rc=0
    wait_for_quiet
    started=$(date +%s)
    log "$label: $CLIENTS clients, $DURATION_S s, $ACCOUNTS accounts, hot accounts $hot"
    "$BIN" bench ledger --url "$URL" --clients "$CLIENTS" --duration-s "$DURATION_S" \
        --accounts "$ACCOUNTS" --hot-accounts "$hot" --json >"$WORK/$label.bench" || rc=$?
    ended=$(date +%s)
    curl -sf --max-time 10 "$URL/metrics" >"$WORK/$label.metrics" || : >"$WORK/$label.metrics"
    python3 - "$WORK/$label" "$rc" "$(server_peak_rss_kb)" "$started" "$ended" <<'PY'
import json, sys
base, rc, rss_kb, started, ended = sys.argv[1:]
bench = json.loads(open(base + ".bench").read().strip().splitlines()[-1])
metrics = {}
for line in open(base + ".metrics"):
    if line.startswith("ferrobank_ledger_batch_transfers") or line.startswith("ferrobank_ledger_queue_depth"):
        name, _, value = line.rpartition(" ")
        metrics[name] = float(value)
json.dump({"bench": bench, "exit_code": int(rc), "peak_rss_kb": int(rss_kb),
           "metrics": metrics, "window": [int(started), int(ended)]},
          open(base + ".json", "w"))
PY
    log "$label: $(cat "$WORK/$label.bench")"
}

# The raw SQL baseline: one transfer per transaction, the same rows ferrobank writes.
write_pgbench_script() {
    cat >"$WORK/transfer.sql" <<'SQL'
-- One posted transfer per transaction on the ferrobank schema: both balances, the
-- transfer row (with the balances after it, as ferrobank stores them), one outbox row.
\set dr random(1, :debit_range)
\set off random(1, :naccounts - 1)
\set cr 1 + (:dr - 1 + :off) % :naccounts
\set amount random(1, 10000)
BEGIN;
-- Rows are locked in one global order, as ferrobank does, so clients queue instead of deadlocking.
\if :dr < :cr
UPDATE accounts SET debits_posted = debits_posted + :amount WHERE id = md5('acct-' || :dr)::uuid::text
  RETURNING debits_pending, debits_posted, credits_pending, credits_posted \gset d_
UPDATE accounts SET credits_posted = credits_posted + :amount WHERE id = md5('acct-' || :cr)::uuid::text
  RETURNING debits_pending, debits_posted, credits_pending, credits_posted \gset c_
\else
UPDATE accounts SET credits_posted = credits_posted + :amount WHERE id = md5('acct-' || :cr)::uuid::text
  RETURNING debits_pending, debits_posted, credits_pending, credits_posted \gset c_
UPDATE accounts SET debits_posted = debits_posted + :amount WHERE id = md5('acct-' || :dr)::uuid::text
  RETURNING debits_pending, debits_posted, credits_pending, credits_posted \gset d_
\endif
INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, ledger, currency, code, kind,
    timeout_s, linked, created_at_ms,
    dr_debits_pending, dr_debits_posted, dr_credits_pending, dr_credits_posted,
    cr_debits_pending, cr_debits_posted, cr_credits_pending, cr_credits_posted)
  VALUES (gen_random_uuid()::text, md5('acct-' || :dr)::uuid::text, md5('acct-' || :cr)::uuid::text,
    :amount, 978, 'EUR', 1, 'posted', 0, 0, (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
    :d_debits_pending, :d_debits_posted, :d_credits_pending, :d_credits_posted,
    :c_debits_pending, :c_debits_posted, :c_credits_pending, :c_credits_posted)
  RETURNING id AS tid, debit_account_id AS dr_id, credit_account_id AS cr_id, created_at_ms AS at_ms \gset
INSERT INTO outbox (event_id, kind, payload, created_at_ms)
  VALUES (:tid::text, 'transfer.created', json_build_object('transfer_id', :tid::text,
    'debit_account_id', :dr_id::text, 'credit_account_id', :cr_id::text, 'amount', :amount::bigint,
    'currency', 'EUR', 'ledger', 978, 'code', 1, 'pending_id', NULL, 'pending', false,
    'expired', false)::text, :at_ms::bigint);
COMMIT;
SQL
}

run_pgbench() {
    local label=$1 debit_range=$2 started ended
    wait_for_quiet
    started=$(date +%s)
    log "$label: pgbench -c $CLIENTS -j 2 -T $DURATION_S, debit range $debit_range"
    pgbench -n -c "$CLIENTS" -j 2 -T "$DURATION_S" -M prepared -f "$WORK/transfer.sql" \
        -D naccounts="$ACCOUNTS" -D debit_range="$debit_range" \
        -l --log-prefix="$WORK/$label.txlog" "$PGB_DB" >"$WORK/$label.pgbench" 2>&1 || {
        echo "pgbench failed:" >&2
        tail -20 "$WORK/$label.pgbench" >&2
        exit 1
    }
    ended=$(date +%s)
    python3 - "$WORK/$label" "$started" "$ended" <<'PY'
import glob, json, re, sys
base, started, ended = sys.argv[1:]
text = open(base + ".pgbench").read()
def grab(pattern, cast=float):
    m = re.search(pattern, text, re.M)
    return cast(m.group(1)) if m else None
# Per-transaction log: client tx_no latency_us script_no epoch_s epoch_us.
latencies = sorted(int(line.split()[2]) for path in glob.glob(base + ".txlog*")
                   for line in open(path) if line.strip())
def pct(q):
    return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000.0 if latencies else None
json.dump({"tps": grab(r"^tps = ([0-9.]+) \(without initial connection time\)"),
           "latency_avg_ms": grab(r"^latency average = ([0-9.]+) ms"),
           "processed": grab(r"^number of transactions actually processed: (\d+)", int),
           "failed": grab(r"^number of failed transactions: (\d+)", int),
           "p50_ms": pct(0.5), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
           "window": [int(started), int(ended)],
           "output": text}, open(base + ".json", "w"))
PY
    log "$label: $(grep -E '^(tps|latency average|number of failed)' "$WORK/$label.pgbench" | tr '\n' ' ')"
}

verify_ledger() {
    local label=$1
    shift
    if "$BIN" ledger verify "$@" >"$WORK/$label.verify" 2>&1; then
        echo "ok" >"$WORK/$label.verified"
    else
        echo "FAILED" >"$WORK/$label.verified"
        tail -5 "$WORK/$label.verify" >&2
    fi
    log "$label: ledger verify: $(cat "$WORK/$label.verified")"
}

sample_load >"$WORK/load.log" &
SAMPLER_PID=$!

# 1. ferrobank on PostgreSQL.
createdb "$FB_DB"
start_server pg --database-url "$PG_URL/$FB_DB"
run_ledger_bench pg_uniform 0
run_ledger_bench pg_hot "$HOT_ACCOUNTS"
stop_server
verify_ledger pg --database-url "$PG_URL/$FB_DB"
dropdb "$FB_DB"

# 2. pgbench on the same schema, same concurrency, fresh database.
createdb "$PGB_DB"
"$BIN" migrate --database-url "$PG_URL/$PGB_DB" >/dev/null 2>"$WORK/pgbench-migrate.log"
psql -q -v ON_ERROR_STOP=1 -v n="$ACCOUNTS" "$PGB_DB" <<'SQL'
INSERT INTO accounts (id, ledger, currency, code, owner, flags, created_at_ms)
SELECT md5('acct-' || n)::uuid::text, 978, 'EUR', 1, 'bench', 0,
       (extract(epoch FROM clock_timestamp()) * 1000)::bigint
  FROM generate_series(1, :n) AS n;
VACUUM ANALYZE accounts;
SQL
write_pgbench_script
run_pgbench pgbench_uniform "$ACCOUNTS"
run_pgbench pgbench_hot "$HOT_ACCOUNTS"
dropdb "$PGB_DB"

# 3. ferrobank on SQLite.
start_server sqlite --data-dir "$SQLITE_DIR"
run_ledger_bench sqlite_uniform 0
run_ledger_bench sqlite_hot "$HOT_ACCOUNTS"
stop_server
verify_ledger sqlite --data-dir "$SQLITE_DIR"


# 4. The report.
export BENCH_COMMAND="$COMMAND" BENCH_EFFECTIVE="bench/ledger-vs-pgbench.sh --clients $CLIENTS --duration-s $DURATION_S --accounts $ACCOUNTS --hot-accounts $HOT_ACCOUNTS"
export CLIENTS DURATION_S ACCOUNTS HOT_ACCOUNTS ROOT
python3 - "$WORK" "$OUT" <<'PY'
import json, os, subprocess, sys, datetime
work, out = sys.argv[1:]
def load(name):
    return json.load(open(os.path.join(work, name + ".json")))
def text(name):
    return open(os.path.join(work, name)).read().strip()
def sh(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=os.environ["ROOT"]).stdout.strip()

pg, pg_hot = load("pg_uniform"), load("pg_hot")
pgb, pgb_hot = load("pgbench_uniform"), load("pgbench_hot")
lite, lite_hot = load("sqlite_uniform"), load("sqlite_hot")
clients, duration_s, accounts, hot = (int(os.environ[k]) for k in ("CLIENTS", "DURATION_S", "ACCOUNTS", "HOT_ACCOUNTS"))
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

def mb(kb):
    return kb / 1024.0
def batch_mean(run):
    m = run["metrics"]
    s, c = m.get("ferrobank_ledger_batch_transfers_sum"), m.get("ferrobank_ledger_batch_transfers_count")
    return f"{s / c:.1f}" if s and c else "n/a"
def ratio(a, b):
    return a / b if b else float("nan")

ratio_uniform = ratio(pg["bench"]["transfers_per_s"], pgb["tps"])
ratio_hot = ratio(pg_hot["bench"]["transfers_per_s"], pgb_hot["tps"])
pg_peak_rss_mb = mb(pg_hot["peak_rss_kb"])
lite_peak_rss_mb = mb(lite_hot["peak_rss_kb"])
def met(ok):
    return "**met**" if ok else "**not met**"

meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo"))
ram_gb = int(meminfo["MemTotal"].split()[0]) / 1024 / 1024
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
commit = sh("git", "rev-parse", "--short=12", "HEAD")
dirty = sh("git", "status", "--porcelain", "--untracked-files=no", "--", "crates", "Cargo.toml", "Cargo.lock")
pg_version = sh("psql", "-tAc", "SHOW server_version")
pg_sync = sh("psql", "-tAc", "SELECT current_setting('synchronous_commit') || ', fsync ' || current_setting('fsync')")
loads = {name: load(name) for name in ("pg_uniform", "pg_hot", "pgbench_uniform", "pgbench_hot", "sqlite_uniform", "sqlite_hot")}
load_during = {name: during(run) for name, run in loads.items()}
busy_runs = [name for name, d in load_during.items() if d["rustc_max"] > 0]

def fb_row(name, run):
    b = run["bench"]
    return (f"| {name} | {b['transfers_per_s']:.0f} | {b['p50_ms']:.2f} | {b['p99_ms']:.2f} | "
            f"{b['p999_ms']:.2f} | {b['ok']} / {b['busy']} / {b['failed']} | {batch_mean(run)} | "
            f"{mb(run['peak_rss_kb']):.1f} |")
def pgb_row(name, run):
    return (f"| {name} | {run['tps']:.0f} | {run['p50_ms']:.2f} | {run['p99_ms']:.2f} | "
            f"{run['p999_ms']:.2f} | {run['processed']} / - / {run['failed']} | 1 | - |")

lines = f"""# Benchmarks

Produced by `{os.environ['BENCH_COMMAND'].strip()}` (that is, `{os.environ['BENCH_EFFECTIVE']}`) on {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')},
commit `{commit}`{' (with uncommitted changes under crates/)' if dirty else ''}. Every figure below comes from that
one run; re-run the command to reproduce it on your machine.

**Machine:** {os.cpu_count()} CPU ({cpu}), {ram_gb:.1f} GiB RAM; PostgreSQL {pg_version} on 127.0.0.1
(synchronous_commit {pg_sync}), stock configuration. The ferrobank server, its load
generator (`ferrobank bench ledger`, same binary) and PostgreSQL share these {os.cpu_count()} CPUs.

**Load:** {clients} concurrent clients, each with one request in flight, {duration_s} s per measurement,
{accounts} accounts, transfers between two random accounts (uniform) or debiting one of {hot} accounts
(hot). ferrobank: `ferrobank serve --migrate` with its default configuration (JSON access log at
info), one transfer per `POST /api/transfers`, no `Idempotency-Key` header; the bench opens its
accounts through the API before the clock starts. Each ferrobank transfer is checked for an existing
id, its accounts are locked (`SELECT ... FOR UPDATE`), balances, transfer row and outbox row are
written, and it commits with its batch. pgbench: `pgbench -n -c {clients} -j 2 -T {duration_s} -M prepared`
with the script below on a fresh database with the same schema (`ferrobank migrate`), one transfer
per transaction. The server's log and pgbench's transaction log go to tmpfs, so their appends do
not share the ext4 journal with the databases' fsyncs; the SQLite database is on the disk
(WAL, `synchronous = FULL`).

## Results

| run | transfers/s | p50 ms | p99 ms | p99.9 ms | ok / busy (503) / failed | transfers per commit (mean) | server peak RSS MB |
|---|---:|---:|---:|---:|---|---:|---:|
{fb_row("ferrobank, PostgreSQL, uniform", pg)}
{pgb_row("pgbench, PostgreSQL, uniform", pgb)}
{fb_row("ferrobank, SQLite, uniform", lite)}
{fb_row(f"ferrobank, PostgreSQL, {hot} hot accounts", pg_hot)}
{pgb_row(f"pgbench, PostgreSQL, {hot} hot accounts", pgb_hot)}
{fb_row(f"ferrobank, SQLite, {hot} hot accounts", lite_hot)}

pgbench latency average: uniform {pgb['latency_avg_ms']:.2f} ms, hot {pgb_hot['latency_avg_ms']:.2f} ms
(pgbench percentiles are computed from its per-transaction log). ferrobank latency is measured by the
client around the whole HTTP request; pgbench latency around the SQL transaction. Server RSS is
VmHWM from /proc/PID/status, the peak over the uniform and the hot run (same server process).
`ferrobank ledger verify` after the runs: PostgreSQL {text('pg.verified')}, SQLite {text('sqlite.verified')}.

**Ratio ferrobank / pgbench** (transfers/s over tps): uniform **{ratio_uniform:.2f}x**, hot accounts **{ratio_hot:.2f}x**.

## Targets (from the issue)

| target | measured | |
|---|---|---|
| ferrobank over HTTP >= 1.5x the raw one-transfer-per-transaction SQL rate | {ratio_uniform:.2f}x uniform, {ratio_hot:.2f}x hot | {met(ratio_uniform >= 1.5)} (uniform), {met(ratio_hot >= 1.5)} (hot) |
| p99 < 50 ms, PostgreSQL | {pg['bench']['p99_ms']:.1f} ms uniform, {pg_hot['bench']['p99_ms']:.1f} ms hot | {met(max(pg['bench']['p99_ms'], pg_hot['bench']['p99_ms']) < 50)} |
| p99 < 50 ms, SQLite | {lite['bench']['p99_ms']:.1f} ms uniform, {lite_hot['bench']['p99_ms']:.1f} ms hot | {met(max(lite['bench']['p99_ms'], lite_hot['bench']['p99_ms']) < 50)} |
| server RSS < 150 MB | {pg_peak_rss_mb:.1f} MB PostgreSQL, {lite_peak_rss_mb:.1f} MB SQLite (peak of each server process) | {met(max(pg_peak_rss_mb, lite_peak_rss_mb) < 150)} |

## Conditions

The machine is shared: the script samples the 1-minute load average and the number of
running `rustc` processes once a second. {('Other compilation was running during: ' + ', '.join(busy_runs) + '. Those figures are lower, and their tails longer, than on a quiet machine.') if busy_runs else 'No other compilation was running during any measurement.'}

| run | max load1 (includes the benchmark itself) | max rustc processes | share of seconds with rustc running |
|---|---:|---:|---:|
""" + "\n".join(f"| {n} | {d['load1_max']:.2f} | {d['rustc_max']} | {100 * d['rustc_share']:.0f}% |"
                for n, d in load_during.items()) + f"""

## pgbench script

```sql
{text('transfer.sql')}
```
"""
# Keep the sections other benchmark scripts own (between their begin/end markers).
kept = ""
if os.path.exists(out):
    previous = open(out).read()
    kept = "".join("\n" + m.group(0) + "\n" for m in re.finditer(r"<!-- ([a-z-]+):begin -->.*?<!-- \1:end -->", previous, re.S))
open(out, "w").write(lines + kept)
print(f"wrote {out}: ferrobank {pg['bench']['transfers_per_s']:.0f}/s vs pgbench {pgb['tps']:.0f} tps = {ratio_uniform:.2f}x")
PY
