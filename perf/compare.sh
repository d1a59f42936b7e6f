#!/usr/bin/env bash
# Runs one harness scenario against rjabberd, ejabberd and Prosody, one after another on this machine,
# and prints a ratio table (rjabberd vs each).
#
#   perf/compare.sh SCENARIO N [harness options…]
#   perf/compare.sh chat 1000 --rate 1000 --duration 10
#   perf/compare.sh idle 10000
#   perf/compare.sh login 5000 --mech scram-sha1
#   SERVERS="ejabberd prosody" perf/compare.sh presence 1000 --rate 100 --contacts 18
#
# For `presence` every server gets the same rosters (user i's contacts are its ring neighbours i±1 …
# i±K/2, subscription both): Prosody's roster files are written directly, ejabberd's through its HTTP
# API (add_rosteritem), rjabberd's by `rjabberd-bench provision --contacts K` into its store.
# Each server gets a temporary directory, loopback ports, the domain `localhost` and the same users
# (`u0`…`u{N-1}`, password `pw`), plaintext c2s with SASL allowed without TLS, and no shapers, rate
# limits or traffic caps. Servers run on CPU 0 (SERVER_CPUS), the harness on CPU 1 (HARNESS_CPUS).
# Each runs the instant-messaging modules rjabberd runs by default: rosters, blocking, carbons and client
# state (ejabberd: mod_carboncopy, mod_blocking with mod_privacy, mod_client_state; Prosody: carbons,
# blocklist, csi_simple), so that `--carbons` (every session enables XEP-0280) works everywhere:
#   perf/compare.sh chat 1000 --rate 1000 --duration 5 --carbons
# An A/B of a change in one sitting: RJABBERD_BASELINE=/path/to/an/older/rjabberd and the server name
# `baseline` in SERVERS run that binary with rjabberd's configuration and users, e.g.
#   RJABBERD_BASELINE=../old/target/release/rjabberd SERVERS="baseline rjabberd" perf/compare.sh chat 1000
# What per-stage latency sampling costs (see tuning.md): SERVERS="nosampling rjabberd" runs the same build
# with `[metrics] latency_sample = 0` and with every stanza sampled. rjabberd's own metrics at the end
# of a run are saved as $OUT/NAME.metrics (Prometheus text; `perf/stages.py` prints the stages) and
# $OUT/NAME.latency (`rjabberd ctl latency`: the per-stage table to 1 %).
# ejabberd and Prosody are installed from Debian when absent. Results: $OUT (default /tmp/rjabberd-compare).
set -euo pipefail

SCENARIO=${1:?scenario: login, idle, chat, mixed or presence}
USERS=${2:?number of users}
shift 2
EXTRA=("$@")
CONTACTS=18
for ((i = 0; i < ${#EXTRA[@]}; i++)); do
    if [ "${EXTRA[$i]}" = "--contacts" ]; then CONTACTS=${EXTRA[$((i + 1))]}; fi
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT=${OUT:-/tmp/rjabberd-compare}
SERVER_CPUS=${SERVER_CPUS:-0}
HARNESS_CPUS=${HARNESS_CPUS:-1}
SERVERS=${SERVERS:-"rjabberd ejabberd prosody"}
PORT=35222
# Servers get as many scheduler threads as CPUs they are pinned to; BEAM's schedulers must not busy-wait
# (they would spin against each other on a shared CPU and bill ejabberd for it).
NCPUS=$(echo "$SERVER_CPUS" | tr ',' '\n' | wc -l)
rm -rf "$OUT" && mkdir -p "$OUT"

if ! command -v ejabberdctl >/dev/null || ! command -v prosody >/dev/null; then
    apt-get update && apt-get install -y ejabberd prosody
fi
(cd "$ROOT" && cargo build --release -p rjabberd -p bench-harness)
BENCH="$ROOT/target/release/rjabberd-bench"
RJABBERD="$ROOT/target/release/rjabberd"

wait_port() {
    for _ in $(seq 1 200); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), 0.2)" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "port $1 did not open" >&2
    return 1
}

run_harness() { # name pid
    taskset -c "$HARNESS_CPUS" "$BENCH" run --scenario "$SCENARIO" --users "$USERS" \
        --server "127.0.0.1:$PORT" --server-pid "$2" --label "$1" \
        --json "$OUT/$1.json" --svg "$OUT/$1.svg" "${EXTRA[@]}" | tee "$OUT/$1.txt"
}

start_rjabberd() { start_rjabberd_binary rjabberd "$RJABBERD" 1; }
# The same build with per-stage latency sampling off: what sampling every stanza costs.
start_nosampling() { start_rjabberd_binary nosampling "$RJABBERD" 0; }
stop_nosampling() { stop_rjabberd; }
# An older build may not know the [metrics] section: it runs without it.
start_baseline() { start_rjabberd_binary baseline "${RJABBERD_BASELINE:?RJABBERD_BASELINE names the binary to compare}" ""; }
stop_baseline() { stop_rjabberd; }

METRICS_PORT=$((PORT + 2))

start_rjabberd_binary() { # name binary latency_sample (empty: no [metrics] section)
    local d="$OUT/$1"
    mkdir -p "$d"
    local metrics=""
    if [ -n "$3" ]; then
        metrics=$'[metrics]\n'"listen = \"127.0.0.1:$METRICS_PORT\""$'\n'"latency_sample = $3"
    fi
    cat >"$d/rjabberd.toml" <<EOF
shards = $NCPUS
data_dir = "$d/data"
log_level = "warn"
[[host]]
name = "localhost"
[[listener]]
address = "127.0.0.1:$PORT"
[limits]
max_connections_per_shard = 1000000
max_sessions_per_user = 10
max_output_queue_bytes = 16777216
[auth]
allow_plaintext = true
$metrics
EOF
    local contacts=()
    if [ "$SCENARIO" = presence ]; then contacts=(--contacts "$CONTACTS"); fi
    "$BENCH" provision --data-dir "$d/data" --users "$USERS" "${contacts[@]}" >/dev/null
    taskset -c "$SERVER_CPUS" "$2" --config "$d/rjabberd.toml" >"$d/server.log" 2>&1 &
    wait_port $PORT
    PID=$(pgrep -n -x rjabberd)
}

stop_rjabberd() { kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; }

# rjabberd's own view of the run (per-stage latency, counters), scraped before it stops.
save_metrics() { # name
    python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$METRICS_PORT/metrics', timeout=10).read().decode())" \
        >"$OUT/$1.metrics" 2>/dev/null || rm -f "$OUT/$1.metrics"
}

start_ejabberd() {
    local d="$OUT/ejabberd"
    mkdir -p "$d/spool" "$d/logs"
    # ejabberdctl starts erl as the ejabberd user through su, whose PAM session resets the open-file
    # limit to 1,024 (ejabberd then refuses connections beyond ~1,000): erl is started through a
    # wrapper that raises it again.
    printf '#!/bin/sh\nulimit -n "$(ulimit -Hn)"\nexec /usr/bin/erl "$@"\n' >"$d/erl"
    chmod 755 "$d/erl"
    cat >"$d/ejabberdctl.cfg" <<EOF
ERL=$d/erl
EJABBERD_CONFIG_PATH=$d/ejabberd.yml
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 +K true +P 1000000 +S $NCPUS:$NCPUS +sbwt none +sbwtdcpu none +sbwtdio none"
ERL_MAX_PORTS=1000000
EOF
    cat >"$d/ejabberd.yml" <<EOF
hosts: ["localhost"]
loglevel: warning
listen:
  - port: $PORT
    ip: "127.0.0.1"
    module: ejabberd_c2s
    # Erlang's listen backlog defaults to 5: a login storm would lose SYNs (1 s retransmissions each)
    # and measure the queue, not ejabberd.
    backlog: 4096
    max_stanza_size: 262144
    shaper: none
    access: all
    starttls_required: false
  - port: $((PORT + 1))
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
auth_method: internal
auth_password_format: scram
shaper: {}
shaper_rules: {}
max_fsm_queue: 1000000
acl:
  loopback:
    ip: ["127.0.0.0/8"]
access_rules:
  local: {allow: all}
  c2s: {allow: all}
api_permissions:
  "bench register":
    from: [mod_http_api]
    who: loopback
    what: ["register", "add_rosteritem"]
modules:
  mod_http_api: {}
  mod_admin_extra: {}
  mod_disco: {}
  mod_ping: {}
  mod_roster: {}
  mod_carboncopy: {}
  mod_privacy: {}
  mod_blocking: {}
  mod_client_state: {}
EOF
    cp /etc/ejabberd/inetrc "$d/"
    chown -R ejabberd:ejabberd "$d"
    EJ=(ejabberdctl --config-dir "$d" --spool "$d/spool" --logs "$d/logs" --node "bench@localhost")
    (cd /tmp && taskset -c "$SERVER_CPUS" "${EJ[@]}" start)
    timeout 60 "${EJ[@]}" started
    wait_port $PORT
    python3 - "$USERS" $((PORT + 1)) <<'PY'
import http.client, json, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    c.request("POST", "/api/register", json.dumps({"user": f"u{i}", "host": "localhost", "password": "pw"}),
              {"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    if r.status != 200 and i == 0:
        sys.exit(f"ejabberd register: {r.status}")
PY
    if [ "$SCENARIO" = presence ]; then
        python3 - "$USERS" $((PORT + 1)) "$CONTACTS" <<'PY'
import http.client, json, sys
n, port, k = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
half = min(k // 2, (n - 1) // 2)
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    for d in range(1, half + 1):
        for j in ((i + d) % n, (i - d) % n):
            body = {"localuser": f"u{i}", "localhost": "localhost", "user": f"u{j}",
                    "host": "localhost", "nick": f"u{j}", "group": "bench", "subs": "both"}
            c.request("POST", "/api/add_rosteritem", json.dumps(body), {"Content-Type": "application/json"})
            r = c.getresponse(); text = r.read()
            if r.status != 200:
                sys.exit(f"ejabberd add_rosteritem: {r.status} {text[:200]}")
PY
    fi
    PID=$(pgrep -n -f "beam.smp.*bench@localhost")
}

stop_ejabberd() { "${EJ[@]}" stop >/dev/null || true; "${EJ[@]}" stopped >/dev/null 2>&1 || true; }

start_prosody() {
    local d="$OUT/prosody"
    mkdir -p "$d/data/localhost/accounts"
    cat >"$d/prosody.cfg.lua" <<EOF
pidfile = "$d/prosody.pid"
data_path = "$d/data"
log = { warn = "$d/prosody.log", error = "$d/prosody.err" }
interfaces = { "127.0.0.1" }
c2s_ports = { $PORT }
s2s_ports = { }
http_ports = { }
https_ports = { }
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
limits = { c2s = { rate = "1000mb/s" } }
network_backend = "epoll"
modules_enabled = { "roster", "saslauth", "disco", "ping", "carbons", "blocklist", "csi_simple" }
modules_disabled = { "s2s", "tls" }
VirtualHost "localhost"
EOF
    python3 - "$USERS" "$d/data/localhost/accounts" <<'PY'
import sys
n, d = int(sys.argv[1]), sys.argv[2]
for i in range(n):
    with open(f"{d}/u{i}.dat", "w") as f:
        f.write('return {\n\t["password"] = "pw";\n};\n')
PY
    if [ "$SCENARIO" = presence ]; then
        "$BENCH" prosody-rosters --data-dir "$d/data" --users "$USERS" --contacts "$CONTACTS"
    fi
    chown -R prosody:prosody "$d"
    # Prosody refuses to run as root: it runs as its own user, with the open-file limit raised again
    # (runuser's PAM session resets it to 1,024).
    (cd "$d" && exec runuser -u prosody -- sh -c "ulimit -n \$(ulimit -Hn); exec taskset -c $SERVER_CPUS prosody --config $d/prosody.cfg.lua -F" >"$d/stdout.log" 2>&1) &
    wait_port $PORT
    PID=$(pgrep -n -f "^lua.*prosody --config $d" || pgrep -n -f "prosody --config $d")
}

stop_prosody() { kill -TERM "$PID" 2>/dev/null || true; sleep 1; pkill -f "prosody --config $OUT" || true; }

for s in $SERVERS; do
    echo "== $s"
    "start_$s"
    run_harness "$s" "$PID" || echo "$s: the harness failed" >&2
    case "$s" in
    rjabberd | nosampling)
        save_metrics "$s"
        "$RJABBERD" --config "$OUT/$s/rjabberd.toml" ctl latency >"$OUT/$s.latency" 2>&1 || true
        ;;
    esac
    "stop_$s"
    sleep 1
done

python3 - "$OUT" $SERVERS <<'PY'
import json, sys, os
out, names = sys.argv[1], sys.argv[2:]
res = {n: json.load(open(f"{out}/{n}.json")) for n in names if os.path.exists(f"{out}/{n}.json")}
def chat(r, k):
    steps = [s for s in r.get("chat", []) if s.get("latency")]
    if not steps: return None
    s = steps[-1]
    return s["latency"].get(k) if k.endswith("_ms") else s.get(k)
rows = [
    ("logins/s", lambda r: r.get("logins_per_sec"), True),
    ("server CPU µs per login", lambda r: r.get("server_cpu_us_per_login"), False),
    ("RSS KiB per idle session", lambda r: r.get("rss_kib_per_idle_session"), False),
    ("chat rate (msg/s)", lambda r: chat(r, "rate"), True),
    ("chat received", lambda r: chat(r, "received"), True),
    ("chat lost", lambda r: chat(r, "lost"), False),
    ("server CPU µs per message", lambda r: chat(r, "server_cpu_us_per_message"), False),
    ("p50 ms", lambda r: chat(r, "p50_ms"), False),
    ("p99 ms", lambda r: chat(r, "p99_ms"), False),
    ("p99.9 ms", lambda r: chat(r, "p999_ms"), False),
    ("find-max rate", lambda r: r.get("find_max_rate"), True),
]
print()
print(f"{'figure':28}" + "".join(f"{n:>14}" for n in res) + "".join(f"{'rj vs ' + n:>16}" for n in res if n != "rjabberd"))
for label, f, higher_better in rows:
    vals = {n: f(r) for n, r in res.items()}
    if all(v is None for v in vals.values()): continue
    line = f"{label:28}" + "".join(f"{(v if v is not None else float('nan')):>14.3f}" if isinstance(v, (int, float)) else f"{'-':>14}" for v in vals.values())
    rj = vals.get("rjabberd")
    for n, v in vals.items():
        if n == "rjabberd": continue
        if isinstance(rj, (int, float)) and isinstance(v, (int, float)) and v and rj:
            ratio = rj / v if higher_better else v / rj
            line += f"{ratio:>15.2f}x"
        else:
            line += f"{'-':>16}"
    print(line)
print("\n(ratios: how many times better rjabberd is; results and plots in", out + ")")
PY
