#!/usr/bin/env bash
# Heartbeat latency while dashboard tabs poll the live status (issue 11, item 10).
#
# usage: benches/monitor.sh [BIN] [TABS] [QUERY]
#   BIN    a release lic-udp (default target/release/lic-udp)
#   TABS   clients polling /api/status every 2 s, as the monitor does (default 3)
#   QUERY  appended to /api/status, e.g. '?holders=100' for what the monitor page asks (default none)
# Starts `serve --http` on a throw-away data dir with two 65,535-seat licenses, then runs
# `bench --server` with 100,000 instances at 100,000 heartbeats/s for 20 s, and prints the ACK
# latency, the losses, and each tab's poll sizes and times. Loopback only; about 70 s.
set -u
BIN=${1:-target/release/lic-udp}
TABS=${2:-3}
QUERY=${3:-}
PW="correct horse battery staple"
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
P=$(shuf -i 20000-29000 -n 1); H=$((P + 1000))
printf '%s\n' "$PW" | "$BIN" user add --user admin --password-stdin --data-dir "$d" >/dev/null 2>&1
issue() { printf '%s\n' "$PW" | "$BIN" issue --user admin --type team --seats 65535 --password-stdin --data-dir "$d" 2>/dev/null; }
s1=$(issue); s2=$(issue)
tok=$(printf '%s\n' "$PW" | "$BIN" token add --user admin --password-stdin --data-dir "$d" 2>/dev/null | tail -1)
"$BIN" serve --listen "127.0.0.1:$P" --http "127.0.0.1:$H" --lease-ttl 60s --data-dir "$d" 2>"$d/serve.log" &
spid=$!
sleep 2
pids=()
for i in $(seq 1 "$TABS"); do
    (
        end=$((SECONDS + 200))
        while [ $SECONDS -lt $end ]; do
            curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' \
                -H "Authorization: Bearer $tok" "http://127.0.0.1:$H/api/status$QUERY" >>"$d/tab$i.log"
            sleep 2
        done
    ) &
    pids+=($!)
done
"$BIN" bench --server "127.0.0.1:$P" --serial "$s1" --serial "$s2" --clients 100000 --rate 100000 \
    --duration 20s --json >"$d/bench.json" 2>"$d/bench.err"
[ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
kill "$spid"; wait "$spid" 2>/dev/null
python3 - "$d" <<'PY'
import glob, json, sys
d = sys.argv[1]
j = json.load(open(d + "/bench.json"))
lat = j["latency_us"]
print(f"ACK latency p50 / p99 / p99.9 {lat['p50']} / {lat['p99']} / {lat['p999']} µs; "
      f"{j['heartbeats_per_s']:.0f} heartbeats/s; losses {j['losses']}")
for f in sorted(glob.glob(d + "/tab*.log")):
    rows = [l.split() for l in open(f) if l.strip()]
    print(f"{f.split('/')[-1]}: {len(rows)} polls, codes {sorted({r[0] for r in rows})}, "
          f"largest {max(int(r[1]) for r in rows)} bytes, slowest {max(float(r[2]) for r in rows):.2f} s")
PY
