#!/usr/bin/env bash
# Where the CPU time of a join goes: profiles one join of `join_speed` with perf and splits the
# samples of the threads that do the work by what they were doing.
#
#   benches/scripts/profile_join.sh [KEYS]
#
# Runs `join_speed --skip-bulk --joins 1 --pause-before-join-ms 3000`, attaches
# `perf record --call-graph dwarf` to it for the join (it pauses after loading A), and prints
# CPU seconds per thread role (A's gateway = snapshot sender, B's gateway = receiver, B's
# chunk decoder, B's actors) and per category, classified by the functions on each sample's
# stack; the nodes' shutdown at the end is shown apart, not counted. Needs perf
# (kernel.perf_event_paranoid ≤ 2 is enough for one's own processes) and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
KEYS=${1:-1000000}
HZ=499
for tool in perf python3; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
cargo build --quiet --release -p benches --bin join_speed
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

./target/release/join_speed --keys "$KEYS" --skip-bulk --joins 1 --pause-before-join-ms 3000 \
    >"$TMP/out.md" 2>"$TMP/err.txt" &
JOIN_PID=$!
for _ in $(seq 600); do
    grep -q 'B joins in' "$TMP/err.txt" 2>/dev/null && break
    sleep 0.2
done
grep -q 'B joins in' "$TMP/err.txt" || { cat "$TMP/err.txt" >&2; exit 1; }
# The join takes a few seconds; perf stops when join_speed exits.
perf record -q -F "$HZ" --call-graph dwarf,32768 -p "$JOIN_PID" -o "$TMP/perf.data" 2>/dev/null || true
wait "$JOIN_PID"
grep -E '^\| (1|join) ' "$TMP/out.md"
echo
perf script -i "$TMP/perf.data" -F comm,tid,ip,sym --no-inline 2>/dev/null >"$TMP/script.txt"

python3 - "$TMP/script.txt" "$HZ" <<'EOF'
import collections, sys

path, hz = sys.argv[1], float(sys.argv[2])
samples, cur = [], None
for line in open(path):
    if not line.strip():
        if cur: samples.append(cur)
        cur = None
    elif not line[0].isspace():
        comm, tid = line.split()[:2]
        cur = (comm, tid, [])
    elif cur is not None:
        parts = line.strip().split(None, 1)
        if len(parts) == 2: cur[2].append(parts[1])
if cur: samples.append(cur)

# Threads of the same name: A's were started first (lower tid), B's later. Snapshot chunks are
# decoded on B's blocking-pool threads (tokio's default name, cut to 15 characters by the kernel).
tids = collections.defaultdict(set)
for comm, tid, _ in samples: tids[comm].add(int(tid))
roles = {}
gateways = sorted(tids.get('gateway', ()))
if len(gateways) >= 2: roles[str(gateways[0])], roles[str(gateways[1])] = 'sender', 'receiver'
for comm, ts in tids.items():
    if comm.startswith('actor-') and len(ts) >= 2: roles[str(max(ts))] = 'actor'
    if comm.startswith(('tokio-runtime', 'tokio-rt')):
        for t in ts: roles[str(t)] = 'decoder'

SHUTDOWN = 'after the join: node shutdown (replicas dropped)'
def has(fr, *pats): return any(p in f for f in fr for p in pats)
def classify(role, fr):
    # perf runs until join_speed exits, which stops both nodes (replicas dropped, threads'
    # allocator arenas released): not part of the join.
    if has(fr, 'drop_in_place<replica_node::remote::Core>', 'drop_in_place<replica_node::server::Actor>',
           '__malloc_arena_thread_freeres',
           'drop_in_place<replica_node::node::Node>'):
        return SHUTDOWN
    if role == 'sender':
        if has(fr, 'serialize', 'encode_frame'): return 'chunk encode from the replica (SnapshotWalk, rmp-serde)'
        if has(fr, 'SnapshotWalk'): return 'chunk walk over the replica (SnapshotWalk::page)'
        if has(fr, 'quinn', 'try_send'): return 'QUIC + UDP send'
        if has(fr, 'remote::run', 'tokio'): return 'other in the gateway loop'
        return 'no stack: allocator internals (mostly free), kernel'
    if role == 'decoder':
        if has(fr, 'deserialize', 'decode_frame', 'visit_seq', 'rmp_serde::decode'):
            return 'frame decode (rmp-serde, chunk map built by LwwMap::apply)'
        if has(fr, 'SnapshotPiece::new', 'as core::clone::Clone>::clone'):
            return 'second copy of the chunk (SnapshotPiece::new, tree clone)'
        return 'other (blocking-pool handoff, allocator, kernel)'
    if role == 'receiver':
        if has(fr, 'deserialize', 'decode_frame', 'visit_seq', 'rmp_serde::decode'):
            return 'frame decode (rmp-serde, chunk map built by LwwMap::apply)'
        if has(fr, 'merge_owned'): return 'gateway: chunk moved into its replica, its copy into the held map (merge_owned)'
        if has(fr, 'merge_with', 'apply_ref', 'on_remote', 'on_snapshot_chunk'):
            if any(f.endswith('LwwMap<K,V>::apply') for f in fr):
                return 'gateway merge: record in the inbound fan-out buffer'
            return 'gateway merge: into the gateway replica (apply_ref)'
        if has(fr, 'poll_fanout'): return 'fan-out batch build'
        if has(fr, 'Drop>::drop', 'drop_in_place', 'shared_drop', 'promotable_even_drop', 'shared_v_drop'):
            return 'drop of the decoded chunk'
        if has(fr, 'quinn', 'try_send'): return 'QUIC + UDP receive'
        if has(fr, 'remote::run', 'tokio'): return 'other in the gateway loop'
        return 'no stack: allocator internals, kernel'
    if has(fr, 'on_sync', 'LwwMap<K,V>::merge'): return 'actor merge (Replica::on_sync, LwwMap::merge by reference)'
    if has(fr, 'drop_in_place', 'shared_drop', 'Drop>::drop'): return 'drop of the fan-out batch'
    return 'other'

per = collections.defaultdict(collections.Counter)
for comm, tid, fr in samples:
    role = roles.get(tid)
    if role: per[role][classify(role, fr)] += 1
names = {'sender': "A's gateway (snapshot sender)", 'receiver': "B's gateway (receiver)",
         'decoder': "B's chunk decoder (blocking pool)", 'actor': "B's actors (together)"}
print('| thread | what | CPU s | share |')
print('|---|---|---:|---:|')
for role in ('sender', 'receiver', 'decoder', 'actor'):
    c = per[role]; after = c.pop(SHUTDOWN, 0); total = sum(c.values())
    if not total: continue
    print(f'| **{names[role]}** | **all, during the join** | **{total / hz:.2f}** | |')
    for what, n in c.most_common():
        print(f'| | {what} | {n / hz:.2f} | {100 * n / total:.0f} % |')
    if after:
        print(f'| | ({SHUTDOWN}: {after / hz:.2f}, not counted) | | |')
EOF
