#!/usr/bin/env bash
# Throughput and memory of a 2-actor replica-node against redis-server, same machine, same run.
#
#   benches/scripts/redis_bench.sh [REQUESTS] [REPEATS] [KEYSPACE]
#
# redis-benchmark (50 clients, 100-byte values, SET and GET, pipelining 1 and 16) on a random
# keyspace (`-r KEYSPACE`, default 100000): every SET writes one of KEYSPACE keys at random, so
# the writes are replicated to the other actor and the gateway as in real use (a single key
# would collapse every delta into one entry and hide the cost of replication). The load is two
# redis-benchmark processes of 25 clients each; against the node they split across both actor
# ports, against redis-server both go to its one port, so the client side costs the same.
# Throughput = all requests / wall time of the pair; the median of REPEATS runs is reported.
# The SET runs come first, so the GET runs read keys that exist. After the runs, the RSS of
# each server and its keys (DBSIZE) are printed with the bytes per key.
# Needs redis-server, redis-benchmark, redis-cli (Debian: apt-get install redis-server).
set -euo pipefail
cd "$(dirname "$0")/../.."
REQUESTS=${1:-200000}
REPEATS=${2:-3}
KEYSPACE=${3:-100000}

for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install redis-server)" >&2; exit 2; }
done
cargo build --quiet --release -p replica-node --bin replica-node

free_base() { # a base port with base..base+3 free
    for base in $(seq 21000 37 40000); do
        if ! (ss -ltnu 2>/dev/null | awk '{print $5}' | grep -qE ":($base|$((base+1))|$((base+2))|$((base+3)))\$"); then
            echo "$base"; return
        fi
    done
}
BASE=$(free_base)
NODE_PORT=$BASE
REDIS_PORT=$((BASE + 3))
TMP=$(mktemp -d)
cleanup() { kill "$NODE_PID" "$REDIS_PID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
redis-server --port "$REDIS_PORT" --save '' --appendonly no --logfile "$TMP/redis.log" &
REDIS_PID=$!
./target/release/replica-node --port "$NODE_PORT" --actors 2 --cluster-dir "$TMP/cluster" \
    >"$TMP/node.out" 2>"$TMP/node.err" &
NODE_PID=$!
for _ in $(seq 100); do
    [ -s "$TMP/node.out" ] && redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done

# run PORT_A PORT_B TEST PIPELINE -> requests per second of the pair
run() {
    local half=$((REQUESTS / 2)) t0 t1
    t0=$(date +%s.%N)
    redis-benchmark -p "$1" -c 25 -n "$half" -d 100 -r "$KEYSPACE" -t "$3" -P "$4" -q >/dev/null &
    local a=$!
    redis-benchmark -p "$2" -c 25 -n "$half" -d 100 -r "$KEYSPACE" -t "$3" -P "$4" -q >/dev/null &
    local b=$!
    wait "$a" "$b"
    t1=$(date +%s.%N)
    awk -v n="$REQUESTS" -v a="$t0" -v b="$t1" 'BEGIN { print n / (b - a) }'
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

echo "| test | pipeline | redis-server req/s | replica-node (2 actors) req/s | ratio (target ≥ 1.0) |"
echo "|---|---|---:|---:|---:|"
for pipeline in 1 16; do
    for test in set get; do
        r=(); n=()
        for _ in $(seq "$REPEATS"); do
            r+=("$(run "$REDIS_PORT" "$REDIS_PORT" "$test" "$pipeline")")
            n+=("$(run $((NODE_PORT + 1)) $((NODE_PORT + 2)) "$test" "$pipeline")")
        done
        rm=$(printf '%s\n' "${r[@]}" | median)
        nm=$(printf '%s\n' "${n[@]}" | median)
        printf '| %s | %s | %.0f | %.0f | %.2f |\n' "${test^^}" "$pipeline" "$rm" "$nm" "$(awk -v a="$nm" -v b="$rm" 'BEGIN { print a / b }')"
    done
done
sleep 1 # let the last deltas settle
rk=$(redis-cli -p "$REDIS_PORT" dbsize)
nk=$(redis-cli -p $((NODE_PORT + 1)) dbsize)
rr=$(rss_kib "$REDIS_PID")
nr=$(rss_kib "$NODE_PID")
echo
echo "| server | keys | RSS MiB | RSS bytes per key |"
echo "|---|---:|---:|---:|"
printf '| redis-server | %s | %.1f | %.0f |\n' "$rk" "$(awk -v r="$rr" 'BEGIN { print r / 1024 }')" "$(awk -v r="$rr" -v k="$rk" 'BEGIN { print r * 1024 / k }')"
printf '| replica-node, 2 actors | %s | %.1f | %.0f |\n' "$nk" "$(awk -v r="$nr" 'BEGIN { print r / 1024 }')" "$(awk -v r="$nr" -v k="$nk" 'BEGIN { print r * 1024 / k }')"
echo
echo "$REQUESTS requests per run, median of $REPEATS, keyspace $KEYSPACE (-r), 100-byte values, 50 clients."
echo "1-min load average: $LOAD_BEFORE before, $(cut -d' ' -f1-3 /proc/loadavg) after; $(nproc) cores."
