#!/usr/bin/env bash
# Heartbeats/s and grants/s through a 3-node etcd cluster versus one server on SQLite, same
# machine, same run, alternating (README, "Benchmarks": "Several servers"). Needs etcd on PATH
# and a release build (cargo build --release). Loopback only; everything it starts is killed
# at the end. Usage: benches/cluster.sh [ROUNDS] [CLIENTS] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
CLIENTS=${2:-1000}
DURATION=${3:-5s}
BIN=target/release/lic-udp
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v etcd >/dev/null || { echo "SKIPPED: no etcd (apt-get install etcd-server)" >&2; exit 1; }
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Three etcd members.
CLUSTER=""; CLIENT_URLS=""
declare -a CP PP
for i in 0 1 2; do CP[$i]=$(port); PP[$i]=$(port); CLUSTER+="m$i=http://127.0.0.1:${PP[$i]},"; CLIENT_URLS+="127.0.0.1:${CP[$i]},"; done
for i in 0 1 2; do
  etcd --name m$i --data-dir "$TMP/etcd$i" --listen-client-urls http://127.0.0.1:${CP[$i]} \
    --advertise-client-urls http://127.0.0.1:${CP[$i]} --listen-peer-urls http://127.0.0.1:${PP[$i]} \
    --initial-advertise-peer-urls http://127.0.0.1:${PP[$i]} --initial-cluster "${CLUSTER%,}" \
    --initial-cluster-state new >"$TMP/etcd$i.log" 2>&1 &
  PIDS+=($!)
done
export LIC_UDP_STORE="etcd://${CLIENT_URLS%,}/bench"
PW=bench-password-123

# One SQLite server (its own data dir) and three etcd nodes.
SQL_DIR="$TMP/sqlite"; mkdir -p "$SQL_DIR"
printf '%s\n%s\n' "$PW" "$PW" | env -u LIC_UDP_STORE $BIN user add --user admin --password-stdin --data-dir "$SQL_DIR" >/dev/null 2>&1
SQL_PORT=$(port)
env -u LIC_UDP_STORE $BIN serve --listen 127.0.0.1:$SQL_PORT --data-dir "$SQL_DIR" >"$TMP/sqlite.log" 2>&1 &
PIDS+=($!)
until printf '%s\n%s\n' "$PW" "$PW" | $BIN user add --user admin --password-stdin --data-dir "$TMP/n" >/dev/null 2>&1; do sleep 0.5; done
declare -a NP
for i in 0 1 2; do
  NP[$i]=$(port)
  mkdir -p "$TMP/node$i"
  $BIN serve --listen 127.0.0.1:${NP[$i]} --node-id n$i --data-dir "$TMP/node$i" >"$TMP/node$i.log" 2>&1 &
  PIDS+=($!)
done
issue_sql() { printf '%s\n' "$PW" | env -u LIC_UDP_STORE $BIN issue --user admin --type team --seats 65535 --password-stdin --data-dir "$SQL_DIR" 2>/dev/null; }
issue_etcd() { printf '%s\n' "$PW" | $BIN issue --user admin --type team --seats 65535 --password-stdin --data-dir "$TMP/n" 2>/dev/null; }
sleep 2
median() { sort -g | awk '{a[NR]=$1} END {printf "%.0f\n", a[int((NR+1)/2)]}'; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

declare -a SQL_HB SQL_HS ETCD_HB ETCD_HS ETCD3_HB
for r in $(seq 1 "$ROUNDS"); do
  # Fresh licenses each round: every handshake is a new grant.
  S=$(issue_sql)
  E=$(issue_etcd)
  sleep 0.5
  J=$($BIN bench --server 127.0.0.1:$SQL_PORT --serial "$S" --clients "$CLIENTS" --duration "$DURATION" --json)
  SQL_HB+=("$(echo "$J" | field heartbeats_per_s)"); SQL_HS+=("$(echo "$J" | field handshakes_per_s)")
  J=$($BIN bench --server 127.0.0.1:${NP[0]} --serial "$E" --clients "$CLIENTS" --duration "$DURATION" --json)
  ETCD_HB+=("$(echo "$J" | field heartbeats_per_s)"); ETCD_HS+=("$(echo "$J" | field handshakes_per_s)")
  # All three nodes at once, a third of the instances each (one license, so the seat count
  # is shared): the sum of their heartbeats/s.
  E3=$(issue_etcd)
  sleep 0.5
  BP=()
  for i in 0 1 2; do
    $BIN bench --server 127.0.0.1:${NP[$i]} --serial "$E3" --clients $((CLIENTS / 3)) --duration "$DURATION" --json >"$TMP/b$i.json" &
    BP+=($!)
  done
  wait "${BP[@]}"
  ETCD3_HB+=("$(python3 -c "import json; print(sum(json.load(open('$TMP/b%d.json' % i))['heartbeats_per_s'] for i in range(3)))")")
  echo "round $r: sqlite ${SQL_HB[-1]} hb/s ${SQL_HS[-1]} grants/s | etcd node ${ETCD_HB[-1]} hb/s ${ETCD_HS[-1]} grants/s | 3 etcd nodes ${ETCD3_HB[-1]} hb/s" >&2
done
m() { printf '%s\n' "$@" | median; }
echo "median of $ROUNDS rounds, $CLIENTS instances, $DURATION each:"
echo "  heartbeats/s  sqlite $(m "${SQL_HB[@]}")  etcd node $(m "${ETCD_HB[@]}")  three etcd nodes together $(m "${ETCD3_HB[@]}")"
echo "  grants/s      sqlite $(m "${SQL_HS[@]}")  etcd node $(m "${ETCD_HS[@]}")"
python3 -c "print('  ratio etcd node / sqlite heartbeats: %.2f' % ($(m "${ETCD_HB[@]}") / $(m "${SQL_HB[@]}")))"
