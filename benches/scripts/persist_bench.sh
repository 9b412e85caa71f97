#!/usr/bin/env bash
# Persistence (`--data-dir`) against redis-server's append-only file, same machine, same run.
#
#   benches/scripts/persist_bench.sh [KEYS] [REQUESTS] [REPEATS]
#
# 1. Recovery: KEYS keys (16-byte keys, 100-byte values) are loaded into a 2-actor node with
#    --data-dir, the node is killed with SIGKILL, and restarted REPEATS times (SIGKILL each
#    time): time from the start of the process to its description line (every actor holds every
#    key then). Anchor: redis-server with `appendonly yes, appendfsync everysec`, a pure AOF
#    (`aof-use-rdb-preamble no`, no rewrite) of the same SETs, restarted REPEATS times: time
#    until it answers PING (it answers -LOADING before). Also the RSS of each after the load,
#    and of a node without --data-dir.
# 2. SET throughput: redis-benchmark, 50 clients as two processes of 25, 100-byte values,
#    `-r 100000`, REQUESTS requests (default 1 000 000: long enough that the compactions a
#    write load causes, one per 64 MiB of log, fall evenly into every run), pipelining 1 and
#    16, median of REPEATS: a node without --data-dir, with --data-dir, and redis-server with
#    `appendonly yes, appendfsync everysec`.
# 3. Log bytes per write: INFO log_bytes before and after a run of at most 200 000 requests
#    (no compaction meanwhile) of the node with --data-dir, and for 200 lone SETs (one per
#    batch, after the throughput runs: their keys are of another family than the benchmark's).
# Needs redis-server, redis-benchmark and redis-cli (Debian: apt-get install redis-server).
set -euo pipefail
cd "$(dirname "$0")/../.."
KEYS=${1:-1000000}
REQUESTS=${2:-1000000}
REPEATS=${3:-3}

for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install redis-server)" >&2; exit 2; }
done
cargo build --quiet --release -p replica-node --bin replica-node
BIN=./target/release/replica-node

free_base() { # a base port with base..base+3 free
    for base in $(seq 24000 37 40000); do
        if ! (ss -ltnu 2>/dev/null | awk '{print $5}' | grep -qE ":($base|$((base+1))|$((base+2))|$((base+3)))\$"); then
            echo "$base"; return
        fi
    done
}
BASE=$(free_base)
NODE=$BASE
REDIS=$((BASE + 3))
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rss_mb() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
info() { redis-cli -p "$1" info persistence | tr -d '\r' | awk -F: -v k="$2" '$1 == k { print $2 }'; }

# start_node OUT [ARGS...]: starts a 2-actor node, waits for its description line; sets NODE_PID.
start_node() {
    local out=$1; shift
    : >"$out"
    "$BIN" --port "$NODE" --actors 2 --cluster-dir "$TMP/cluster" "$@" >"$out" 2>>"$TMP/node.err" &
    NODE_PID=$!
    PIDS+=("$NODE_PID")
    while ! [ -s "$out" ]; do
        kill -0 "$NODE_PID" 2>/dev/null || { cat "$TMP/node.err" >&2; exit 1; }
        sleep 0.005
    done
}
wait_keys() { # PORT N: until DBSIZE on PORT reports N
    while [ "$(redis-cli -p "$1" dbsize)" != "$2" ]; do sleep 0.05; done
}

echo "generating $KEYS SETs (16-byte keys, 100-byte values) ..." >&2
awk -v n="$KEYS" 'BEGIN { for (i = 0; i < n; i++) printf "*3\r\n$3\r\nSET\r\n$16\r\nk%015d\r\n$100\r\n%0100d\r\n", i, i }' >"$TMP/load.resp"

# ---- 1. recovery ----
echo "recovery: node ..." >&2
start_node "$TMP/d0" --data-dir "$TMP/data"
redis-cli -p $((NODE + 1)) --pipe <"$TMP/load.resp" >/dev/null
wait_keys $((NODE + 2)) "$KEYS"
sleep 1
NODE_RSS_DATA=$(rss_mb "$NODE_PID")
LOG_BYTES_LOADED=$(info $((NODE + 1)) log_bytes)
kill -9 "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true
DATA_BYTES=$(du -sb "$TMP/data" | awk '{print $1}')
node_times=(); node_self=()
for _ in $(seq "$REPEATS"); do
    t0=$(now)
    start_node "$TMP/d1" --data-dir "$TMP/data"
    t1=$(now)
    node_times+=("$(elapsed "$t0" "$t1")")
    node_self+=("$(sed 's/\x1b\[[0-9;]*m//g' "$TMP/node.err" | grep -o 'data directory recovered.*' | tail -1 | sed -E 's/.* ms=([0-9]+).*/\1/')")
    for p in 1 2; do
        [ "$(redis-cli -p $((NODE + p)) dbsize)" = "$KEYS" ] || { echo "actor $p lacks keys after recovery" >&2; exit 1; }
    done
    NODE_RSS_RECOVERED=$(rss_mb "$NODE_PID")
    kill -9 "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true
done

echo "recovery: node without --data-dir (memory only) ..." >&2
start_node "$TMP/d2"
redis-cli -p $((NODE + 1)) --pipe <"$TMP/load.resp" >/dev/null
wait_keys $((NODE + 2)) "$KEYS"
sleep 1
NODE_RSS_MEM=$(rss_mb "$NODE_PID")
kill -9 "$NODE_PID"; wait "$NODE_PID" 2>/dev/null || true

echo "recovery: redis-server ..." >&2
mkdir -p "$TMP/redis"
REDIS_ARGS=(--port "$REDIS" --dir "$TMP/redis" --save '' --appendonly yes --appendfsync everysec
    --aof-use-rdb-preamble no --auto-aof-rewrite-percentage 0 --logfile "$TMP/redis.log")
redis-server "${REDIS_ARGS[@]}" &
REDIS_PID=$!; PIDS+=("$REDIS_PID")
until redis-cli -p "$REDIS" ping 2>/dev/null | grep -q PONG; do sleep 0.01; done
redis-cli -p "$REDIS" --pipe <"$TMP/load.resp" >/dev/null
REDIS_RSS=$(rss_mb "$REDIS_PID")
redis-cli -p "$REDIS" shutdown >/dev/null 2>&1 || true
wait "$REDIS_PID" 2>/dev/null || true
AOF_BYTES=$(du -sb "$TMP/redis" | awk '{print $1}')
redis_times=()
for _ in $(seq "$REPEATS"); do
    t0=$(now)
    redis-server "${REDIS_ARGS[@]}" &
    REDIS_PID=$!; PIDS+=("$REDIS_PID")
    until redis-cli -p "$REDIS" ping 2>/dev/null | grep -q PONG; do sleep 0.005; done
    t1=$(now)
    redis_times+=("$(elapsed "$t0" "$t1")")
    [ "$(redis-cli -p "$REDIS" dbsize)" = "$KEYS" ] || { echo "redis lacks keys" >&2; exit 1; }
    kill -9 "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true
done
NODE_REC=$(printf '%s\n' "${node_times[@]}" | median)
REDIS_REC=$(printf '%s\n' "${redis_times[@]}" | median)

echo
echo "### Recovery of $KEYS keys (16-byte keys, 100-byte values), median of $REPEATS restarts"
echo
echo "| server | restarts (s) | median s | on disk MB | RSS after load MB |"
echo "|---|---|---:|---:|---:|"
printf '| replica-node, 2 actors, --data-dir (process start to description line; recovery itself: %s ms) | %s | %s | %.1f | %s (%s after recovery) |\n' \
    "$(IFS=/; echo "${node_self[*]}")" "$(IFS=' '; echo "${node_times[*]}")" "$NODE_REC" "$(awk -v b="$DATA_BYTES" 'BEGIN{print b/1e6}')" "$NODE_RSS_DATA" "$NODE_RSS_RECOVERED"
printf '| replica-node, 2 actors, no --data-dir | — | — | — | %s |\n' "$NODE_RSS_MEM"
printf '| redis-server, appendonly yes, everysec, pure AOF (start to PONG) | %s | %s | %.1f | %s |\n' \
    "$(IFS=' '; echo "${redis_times[*]}")" "$REDIS_REC" "$(awk -v b="$AOF_BYTES" 'BEGIN{print b/1e6}')" "$REDIS_RSS"
echo
printf 'recovery ratio node / redis: %.2f (target: <= 2 s and below 1); the data directory held %.1f bytes per key (snapshot and log; %s bytes of log)\n' \
    "$(awk -v a="$NODE_REC" -v b="$REDIS_REC" 'BEGIN{print a/b}')" "$(awk -v a="$DATA_BYTES" -v n="$KEYS" 'BEGIN{print a/n}')" "$LOG_BYTES_LOADED"

# ---- 2. throughput, 3. log bytes per write ----
rm -rf "$TMP/data" "$TMP/redis"; mkdir -p "$TMP/redis"
run() { # PORT_A PORT_B PIPELINE -> requests per second of the pair
    local n=${RUN_REQUESTS:-$REQUESTS}
    local half=$((n / 2)) t0 t1
    t0=$(now)
    redis-benchmark -p "$1" -c 25 -n "$half" -d 100 -r 100000 -t set -P "$3" -q >/dev/null &
    local a=$!
    redis-benchmark -p "$2" -c 25 -n "$half" -d 100 -r 100000 -t set -P "$3" -q >/dev/null &
    local b=$!
    wait "$a" "$b"
    t1=$(now)
    awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { print n / (b - a) }'
}
redis-server --port "$REDIS" --dir "$TMP/redis" --save '' --appendonly yes --appendfsync everysec --logfile "$TMP/redis.log" &
REDIS_PID=$!; PIDS+=("$REDIS_PID")
until redis-cli -p "$REDIS" ping 2>/dev/null | grep -q PONG; do sleep 0.01; done
start_node "$TMP/m" ; MEM_PID=$NODE_PID
NODE_MEM=$NODE; NODE=$((NODE + 100))
start_node "$TMP/p" --data-dir "$TMP/data"
NODE_DATA=$NODE
# Log bytes per write, on the fresh node: one run of each pipelining depth, small enough
# (LOG_REQUESTS) that no segment is compacted meanwhile; lone SETs at the end.
LOG_REQUESTS=$(( REQUESTS < 200000 ? REQUESTS : 200000 ))
per_write=()
for pipeline in 1 16; do
    l0=$(info $((NODE_DATA + 1)) log_bytes)
    RUN_REQUESTS=$LOG_REQUESTS run $((NODE_DATA + 1)) $((NODE_DATA + 2)) "$pipeline" >/dev/null
    sleep 0.1
    l1=$(info $((NODE_DATA + 1)) log_bytes)
    per_write+=("$(awk -v a="$l0" -v b="$l1" -v n="$LOG_REQUESTS" 'BEGIN{printf "%.1f", (b-a)/n}')")
done
echo
echo "### SET throughput, 50 clients, 100-byte values, -r 100000, $REQUESTS requests, median of $REPEATS"
echo
echo "| pipeline | replica-node req/s | replica-node --data-dir req/s | ratio (target >= 0.8) | redis-server appendonly everysec req/s | --data-dir / redis |"
echo "|---|---:|---:|---:|---:|---:|"
for pipeline in 1 16; do
    m=(); p=(); r=()
    for _ in $(seq "$REPEATS"); do
        m+=("$(run $((NODE_MEM + 1)) $((NODE_MEM + 2)) "$pipeline")")
        p+=("$(run $((NODE_DATA + 1)) $((NODE_DATA + 2)) "$pipeline")")
        r+=("$(run "$REDIS" "$REDIS" "$pipeline")")
    done
    echo "-P $pipeline runs (req/s): memory-only ${m[*]}; --data-dir ${p[*]}; redis-server ${r[*]}" >&2
    mm=$(printf '%s\n' "${m[@]}" | median); pm=$(printf '%s\n' "${p[@]}" | median); rm_=$(printf '%s\n' "${r[@]}" | median)
    printf '| %s | %.0f | %.0f | %.2f | %.0f | %.2f |\n' "$pipeline" "$mm" "$pm" "$(awk -v a="$pm" -v b="$mm" 'BEGIN{print a/b}')" \
        "$rm_" "$(awk -v a="$pm" -v b="$rm_" 'BEGIN{print a/b}')"
done
# Lone SETs last: their keys are not redis-benchmark's `key:…` keys, so both nodes see the same
# keys during the throughput runs (a second key family once cost the tree ~20 % at -P 16, before
# each chunk kept its own key prefix; see lww_crdt's tree).
l0=$(info $((NODE_DATA + 1)) log_bytes)
for i in $(seq 200); do redis-cli -p $((NODE_DATA + 1)) set "$(printf 'k%015d' "$i")" "$(printf '%0100d' "$i")" >/dev/null; done
sleep 0.1
l1=$(info $((NODE_DATA + 1)) log_bytes)
per_write+=("$(awk -v a="$l0" -v b="$l1" 'BEGIN{printf "%.1f", (b-a)/200}')")
echo
echo "log bytes per SET (16-byte key, 100-byte value): ${per_write[0]} at -P 1, ${per_write[1]} at -P 16 (writes batched per round), ${per_write[2]} for a lone SET"
echo
echo "$(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg) after the run; $(date -u +%F)"
echo "command: benches/scripts/persist_bench.sh $KEYS $REQUESTS $REPEATS"
