#!/usr/bin/env bash
# Measures one tuning knob of tuning.md side by side, in one run, with the bench harness: the server
# pinned to CPU 0, the harness to CPU 1, plain TCP on loopback, one shard.
#
#   perf/knobs.sh allocator   mimalloc (default build) vs the system allocator (--features
#                             system-allocator): RSS per idle session at 5,000 sessions, server CPU per
#                             message at 1,000 msg/s among 1,000 users
#   perf/knobs.sh backlog     limits.listen_backlog 128 / 1024 / 4096 (the accept queue, capped by
#                             net.core.somaxconn): a storm of 5,000 logins with 2,000 in flight
#   perf/knobs.sh shards      1 shard on CPU 0 vs 2 shards on CPUs 0-1 (the second shares CPU 1 with the
#                             harness): chat among 1,000 users at 1,000 and 10,000 msg/s
#   perf/knobs.sh tls         TLS resumption off / session cache / stateless tickets: 3,000 STARTTLS
#                             logins (the harness's TLS client resumes whenever the server lets it)
#   perf/knobs.sh storage     [storage] backend sqlite vs postgres (a throw-away PostgreSQL on CPU 0, fsync
#                             on), alternating, ROUNDS=2 rounds each: 3,000 SCRAM-SHA-256 logins; offline
#                             messages, 10,000 stored by 100 senders and retrieved by 200 recipients
#   perf/knobs.sh cluster     one host with 2 shards (CPUs 0-1) vs a cluster of 2 hosts with 1 shard each
#                             (CPU 0 and CPU 1), both on one PostgreSQL, vs a two-node ejabberd cluster
#                             (ejabberdctl join_cluster, one node per CPU; SETUPS="single cluster" leaves
#                             it out), alternating, ROUNDS=2 rounds each: chat among 1,000 users at 1,000
#                             and 4,000 msg/s, every user connecting to the hosts in turn (as behind a
#                             load balancer); server CPU per message summed over the hosts, and the
#                             latency percentiles. SETUPS may add `cluster-tls`: the cluster of 2
#                             hosts with TLS on its links (a CA and a certificate per host made with
#                             the openssl commands of docs/cluster.md), on a database of its own
#   perf/knobs.sh sessions    a cluster of 5 hosts (1 shard each, unpinned) holding PER_HOST (19,950) idle
#                             sessions each, one harness process per host (the 20,000-descriptor limit
#                             per process): sessions per host, RSS per host and per session
set -euo pipefail
cd "$(dirname "$0")/.."
knob=${1:?usage: perf/knobs.sh allocator|backlog|shards|tls|storage|cluster|sessions}

cargo build --release -q -p rjabberd -p bench-harness
target=${CARGO_TARGET_DIR:-target}
bench=$target/release/rjabberd-bench
work=$(mktemp -d /tmp/rjabberd-knobs.XXXXXX)
server_pid=""
# The hosts of `cluster`.
extra_pids=()
# The throw-away PostgreSQL of `storage`, once started: its data directory, and how to run its programs
# (as `postgres` when we are root, since PostgreSQL refuses to run as root).
pg_data=""
pg_bin=""
as_pg=()
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  for p in "${extra_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # Immediate: nothing in it is worth a clean shutdown, and it must not wait for clients.
  [ -n "$pg_data" ] && (cd / && "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_data" -m immediate -w stop) >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# start BIN NAME [LIMITS] [TAIL]: a fresh server with 6,000 provisioned users on 127.0.0.1:15333, LIMITS
# appended to [limits] and TAIL to the file; sets server_pid.
start() {
  local bin=$1 dir=$work/$2 extra=${3:-} tail=${4:-}
  mkdir -p "$dir"
  cat > "$dir/rjabberd.toml" <<CONF
shards = ${SHARDS:-1}
data_dir = "$dir/data"
log_level = "warn"
[[host]]
name = "localhost"
[[listener]]
address = "127.0.0.1:15333"
[limits]
max_connections_per_shard = 100000
$extra
[auth]
allow_plaintext = true
$tail
CONF
  # Through the configuration, so that the users land in its [storage], whichever backend.
  "$bench" provision --config "$dir/rjabberd.toml" --users 6000 > "$dir/provision.log"
  taskset -c "${SERVER_CPUS:-0}" "$bin" --config "$dir/rjabberd.toml" > "$dir/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do grep -q "serving" "$dir/server.log" 2>/dev/null && return; sleep 0.1; done
  echo "the server did not start" >&2; cat "$dir/server.log" >&2; exit 1
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }
run() { taskset -c 1 "$bench" run --server 127.0.0.1:15333 --server-pid "$server_pid" "$@"; }

# pg_start DIR: a throw-away PostgreSQL in DIR, on CPU 0 with the server (so that CPU per login counts
# what the database costs the machine, not a core of its own), listening on a Unix socket in DIR only;
# sets pg_data and pg_bin (call it in this shell, not in $(…)). fsync, synchronous_commit and
# full_page_writes keep their defaults (on), as in production: every commit waits for its WAL to reach
# the disk.
pg_start() {
  local dir=$1
  pg_bin=${RJABBERD_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
  [ -x "$pg_bin/initdb" ] || { echo "PostgreSQL is not installed (no initdb)" >&2; exit 1; }
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    as_pg=(runuser -u postgres --)
    chown postgres: "$dir"
    # mktemp made the work directory 0700: the postgres user must reach its socket directory.
    chmod 711 "$work"
  fi
  # The postgres user may not be allowed into the caller's working directory.
  (cd "$dir" && "${as_pg[@]}" "$pg_bin/initdb" -D "$dir/data" -U rjabberd --auth=trust -E UTF8 --no-sync) \
    > "$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  pg_data=$dir/data
  (cd "$dir" && taskset -c 0 "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" \
    -o "-c listen_addresses='' -c unix_socket_directories='$dir'" -w start) > /dev/null \
    || { cat "$dir/postgres.log" >&2; exit 1; }
  (cd "$dir" && "${as_pg[@]}" "$pg_bin/createdb" -h "$dir" -U rjabberd rjabberd)
}

# cluster_host NAME DB PORT CPU [NODE]: one host (a cluster member when NODE is given) on the
# database DB, serving clients on PORT, pinned to CPU; appends its pid to extra_pids.
cluster_host() {
  local name=$1 db=$2 port=$3 cpu=$4 node=${5:-} dir=$work/$1 section=""
  mkdir -p "$dir"
  if [ -n "$node" ]; then
    section="[cluster]
name = \"bench\"
node = \"$node\"
listen = \"127.0.0.$(( ${node#n} + 1 )):0\"
secret_file = \"$work/cluster.secret\""
    if [ -n "${CLUSTER_TLS:-}" ]; then
      section="$section
tls = true
ca_file = \"$work/pki/ca.pem\"
cert_file = \"$work/pki/$node.pem\"
key_file = \"$work/pki/$node.key\""
    fi
  fi
  cat > "$dir/rjabberd.toml" <<CONF
shards = ${SHARDS:-1}
data_dir = "$dir/data"
log_level = "warn"
[[host]]
name = "localhost"
[[listener]]
address = "127.0.0.1:$port"
[limits]
max_connections_per_shard = 100000
[auth]
allow_plaintext = true
[storage]
backend = "postgres"
url = "host=$work/pg user=rjabberd dbname=$db"
pool_size = 2
$section
CONF
  taskset -c "$cpu" "$target/release/rjabberd" --config "$dir/rjabberd.toml" > "$dir/server.log" 2>&1 &
  extra_pids+=($!)
  for _ in $(seq 200); do grep -q "serving" "$dir/server.log" 2>/dev/null && return; sleep 0.1; done
  echo "host $name did not start" >&2; cat "$dir/server.log" >&2; exit 1
}

# cluster_pki NODE...: the cluster's CA and one certificate per node in $work/pki, made as
# docs/cluster.md tells an operator to.
cluster_pki() {
  local pki=$work/pki
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=bench cluster CA" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout ca.key -out ca.pem
    for node in "$@"; do
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$node" \
        -keyout "$node.key" -out "$node.csr"
      printf 'subjectAltName = DNS:%s\nextendedKeyUsage = serverAuth, clientAuth\n' "$node" > "$node.ext"
      openssl x509 -req -in "$node.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
        -extfile "$node.ext" -out "$node.pem"
    done
  ) > "$pki/openssl.log" 2>&1 || { cat "$pki/openssl.log" >&2; exit 1; }
}

# ejabberd_cluster ROUND: two ejabberd nodes (Debian's), bench1@localhost on CPU 0 serving clients on
# 15333 and bench2@localhost on CPU 1 on 15334, the second joined to the first with `ejabberdctl
# join_cluster`, and 1,000 users registered through the first's HTTP API; appends the two beam pids to
# extra_pids and sets ej_ctl (the two ejabberdctl command lines) to stop them.
ejabberd_cluster() {
  local round=$1 k d
  command -v ejabberdctl >/dev/null || { apt-get update && apt-get install -y ejabberd; }
  ej_ctl=()
  for k in 1 2; do
    d=$work/ej$k-$round
    mkdir -p "$d/spool" "$d/logs"
    # ejabberdctl starts erl through su, whose PAM session resets the open-file limit (see compare.sh).
    printf '#!/bin/sh\nulimit -n "$(ulimit -Hn)"\nexec /usr/bin/erl "$@"\n' > "$d/erl"
    chmod 755 "$d/erl"
    cat > "$d/ejabberdctl.cfg" <<CFG
ERL=$d/erl
EJABBERD_CONFIG_PATH=$d/ejabberd.yml
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 +K true +P 1000000 +S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none"
ERL_MAX_PORTS=1000000
CFG
    cat > "$d/ejabberd.yml" <<YML
hosts: ["localhost"]
loglevel: warning
listen:
  - port: $((15332 + k))
    ip: "127.0.0.1"
    module: ejabberd_c2s
    backlog: 4096
    max_stanza_size: 262144
    shaper: none
    access: all
    starttls_required: false
  - port: $((15339 + k))
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
    what: ["register"]
modules:
  mod_http_api: {}
  mod_admin_extra: {}
  mod_disco: {}
  mod_ping: {}
  mod_roster: {}
YML
    cp /etc/ejabberd/inetrc "$d/"
    chown -R ejabberd:ejabberd "$d"
    ej_ctl+=("ejabberdctl --config-dir $d --spool $d/spool --logs $d/logs --node bench$k@localhost")
    (cd /tmp && taskset -c $((k - 1)) ${ej_ctl[$((k - 1))]} start)
    (cd /tmp && timeout 60 ${ej_ctl[$((k - 1))]} started)
  done
  # The second node joins the first's Mnesia cluster (it restarts its ejabberd application to do so).
  (cd /tmp && ${ej_ctl[1]} join_cluster bench1@localhost) > "$work/ej-join-$round.log" 2>&1 ||
    { cat "$work/ej-join-$round.log" >&2; exit 1; }
  (cd /tmp && timeout 60 ${ej_ctl[1]} started)
  python3 - 1000 15340 <<'PY'
import http.client, json, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    c.request("POST", "/api/register", json.dumps({"user": f"u{i}", "host": "localhost", "password": "pw"}),
              {"Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    if r.status not in (200, 409) and i == 0:
        sys.exit(f"ejabberd register: {r.status}")
PY
  (cd /tmp && ${ej_ctl[0]} list_cluster) | sed 's/^/ejabberd cluster: /'
  for k in 1 2; do
    for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$((15332 + k))) 2>/dev/null && break; sleep 0.1; done
    extra_pids+=("$(pgrep -n -f "beam.smp.*bench$k@localhost")")
  done
}

case $knob in
  allocator)
    cargo build --release -q -p rjabberd --features system-allocator --target-dir target/sysalloc
    for variant in mimalloc:$target/release/rjabberd system:target/sysalloc/release/rjabberd; do
      name=${variant%%:*}
      start "${variant#*:}" "$name"
      echo "== $name"
      run --tls none --scenario idle --users 5000 --settle 12 --label "$name" | grep -E "RSS|online|CPU per login"
      run --tls none --scenario chat --users 1000 --rate 1000 --duration 10 --label "$name" --prefix u \
        | grep -E "chat at|CPU per message"
      stop
    done
    ;;
  backlog)
    echo "net.core.somaxconn = $(cat /proc/sys/net/core/somaxconn) (caps the backlog)"
    for value in 128 1024 4096; do
      start "$target/release/rjabberd" "backlog-$value" "listen_backlog = $value"
      echo "== listen_backlog $value"
      run --tls none --scenario login --users 5000 --login-concurrency 2000 --label "backlog $value" \
        | grep -E "logins:|login latency|CPU per login"
      stop
    done
    ;;
  shards)
    for n in 1 2; do
      SHARDS=$n SERVER_CPUS=$([ "$n" = 1 ] && echo 0 || echo 0,1) start "$target/release/rjabberd" "shards-$n"
      echo "== $n shard(s)"
      for rate in 1000 10000; do
        run --tls none --scenario chat --users 1000 --rate $rate --duration 10 --label "$n shards" \
          | grep -E "chat at [0-9]+/s for|CPU per message"
      done
      stop
    done
    ;;
  tls)
    for setting in "none:session_cache_size = 0" "cache:session_cache_size = 20000" \
                   "tickets:session_cache_size = 0
session_tickets = true"; do
      name=${setting%%:*}
      start "$target/release/rjabberd" "tls-$name" "" "[tls]
${setting#*:}"
      echo "== TLS resumption: $name"
      run --scenario login --users 3000 --tls starttls --mech scram-sha256 --label "tls $name" \
        | grep -E "logins:|login latency|CPU per login"
      stop
    done
    ;;
  storage)
    pg_start "$work/pg"
    url="host=$work/pg user=rjabberd dbname=rjabberd"
    db_pid=$(head -1 "$pg_data/postmaster.pid")
    echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on CPU 0, fsync $(cd / &&
      "${as_pg[@]}" "$pg_bin/psql" -h "$work/pg" -U rjabberd -d rjabberd -Atc 'show fsync'), synchronous_commit $(cd / &&
      "${as_pg[@]}" "$pg_bin/psql" -h "$work/pg" -U rjabberd -d rjabberd -Atc 'show synchronous_commit')"
    for round in $(seq "${ROUNDS:-2}"); do
      for backend in sqlite postgres; do
        storage="[storage]
backend = \"$backend\""
        dbargs=()
        if [ "$backend" = postgres ]; then
          storage="$storage
url = \"$url\""
          dbargs=(--db-pid "$db_pid")
        fi
        # One database for every postgres round: the accounts stay, the offline queue is empty again.
        start "$target/release/rjabberd" "storage-$backend-$round" "" "$storage"
        echo "== $backend, round $round ($(cat "$work/storage-$backend-$round/provision.log"))"
        run --tls none --scenario login --users 3000 --mech scram-sha256 --label "$backend" "${dbargs[@]}" \
          | grep -E "logins:|login latency|CPU per login"
        # Let the server end the storm's sessions before messages go to some of those users.
        sleep 1
        run --tls none --scenario offline --users 100 --recipients 200 --messages 100 --batch 10 \
          --mech scram-sha256 --label "$backend" "${dbargs[@]}" | grep -E "^offline|per recipient"
        stop
      done
    done
    ;;
  cluster)
    pg_start "$work/pg"
    db_pid=$(head -1 "$pg_data/postmaster.pid")
    head -c 48 /dev/urandom | base64 > "$work/cluster.secret"
    chmod 600 "$work/cluster.secret"
    for db in single cluster clustertls; do
      (cd "$work/pg" && "${as_pg[@]}" "$pg_bin/createdb" -h "$work/pg" -U rjabberd "$db")
    done
    cluster_pki n1 n2
    for round in $(seq "${ROUNDS:-2}"); do
      for setup in ${SETUPS:-single cluster ejabberd}; do
        extra_pids=()
        ej_ctl=()
        if [ "$setup" = ejabberd ]; then
          ejabberd_cluster "$round"
          servers=(--server 127.0.0.1:15333 --also-server 127.0.0.1:15334 --also-pid "${extra_pids[1]}")
        elif [ "$setup" = single ]; then
          SHARDS=2 cluster_host "single-$round" single 15333 0,1
          servers=(--server 127.0.0.1:15333)
          config=$work/single-$round/rjabberd.toml
        elif [ "$setup" = cluster-tls ]; then
          CLUSTER_TLS=1 cluster_host "tls-n1-$round" clustertls 15333 0 n1
          CLUSTER_TLS=1 cluster_host "tls-n2-$round" clustertls 15334 1 n2
          servers=(--server 127.0.0.1:15333 --also-server 127.0.0.1:15334 --also-pid "${extra_pids[1]}")
          config=$work/tls-n1-$round/rjabberd.toml
        else
          cluster_host "n1-$round" cluster 15333 0 n1
          cluster_host "n2-$round" cluster 15334 1 n2
          servers=(--server 127.0.0.1:15333 --also-server 127.0.0.1:15334 --also-pid "${extra_pids[1]}")
          config=$work/n1-$round/rjabberd.toml
        fi
        if [ "$round" = 1 ] && [ "$setup" != ejabberd ]; then
          "$bench" provision --config "$config" --users 1000 > /dev/null
        fi
        echo "== $setup, round $round"
        for rate in 1000 4000; do
          taskset -c 1 "$bench" run --tls none --scenario chat --users 1000 --rate $rate --duration 10 \
            --label "$setup" --server-pid "${extra_pids[0]}" "${servers[@]}" \
            | grep -E "chat at [0-9]+/s for|CPU per message|latency"
        done
        if [ "$setup" = ejabberd ]; then
          for ctl in "${ej_ctl[@]}"; do (cd /tmp && $ctl stop > /dev/null 2>&1 || true); done
          for p in "${extra_pids[@]}"; do
            for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
          done
        else
          for p in "${extra_pids[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
        fi
        sleep 1
      done
    done
    ;;
  sessions)
    pg_start "$work/pg"
    head -c 48 /dev/urandom | base64 > "$work/cluster.secret"
    chmod 600 "$work/cluster.secret"
    (cd "$work/pg" && "${as_pg[@]}" "$pg_bin/createdb" -h "$work/pg" -U rjabberd sessions)
    hosts=${HOSTS:-5}
    per_host=${PER_HOST:-19950}
    for k in $(seq "$hosts"); do
      cluster_host "s$k" sessions $((15332 + k)) 0,1 "n$k"
    done
    for k in $(seq "$hosts"); do
      "$bench" provision --config "$work/s1/rjabberd.toml" --users "$per_host" --prefix "h${k}u" > /dev/null
    done
    rss0=()
    for p in "${extra_pids[@]}"; do rss0+=("$(awk '/VmRSS/{print $2}' /proc/$p/status)"); done
    harness=()
    for k in $(seq "$hosts"); do
      "$bench" run --tls none --scenario idle --users "$per_host" --prefix "h${k}u" \
        --server 127.0.0.1:$((15332 + k)) --server-pid "${extra_pids[$((k - 1))]}" \
        --settle 600 --label "n$k" > "$work/harness-$k.log" 2>&1 &
      harness+=($!)
    done
    # Measured while every harness still holds its sessions: once all are online, plus a few lease
    # renewals (the session counts travel with them).
    for _ in $(seq 1200); do
      n=$(cat "$work"/harness-*.log 2>/dev/null | grep -c "online in" || true)
      [ "$n" -ge "$hosts" ] && break
      sleep 0.5
    done
    sleep "${SETTLE:-10}"
    for k in $(seq "$hosts"); do grep -E "online in" "$work/harness-$k.log" | tail -1 | sed "s/^/n$k harness: /"; done
    "$target/release/rjabberd" --config "$work/s1/rjabberd.toml" cluster status
    total=0
    grow=0
    for k in $(seq "$hosts"); do
      p=${extra_pids[$((k - 1))]}
      rss=$(awk '/VmRSS/{print $2}' /proc/$p/status)
      fds=$(ls /proc/$p/fd | wc -l)
      echo "n$k: RSS $((rss / 1024)) MiB (was $((${rss0[$((k - 1))]} / 1024)) MiB), $fds descriptors"
      grow=$((grow + rss - ${rss0[$((k - 1))]}))
    done
    sessions=$("$target/release/rjabberd" --config "$work/s1/rjabberd.toml" cluster status --json |
      python3 -c 'import json,sys; print(sum(h["sessions"] for h in json.load(sys.stdin)["hosts"] if h["member"]))')
    echo "sessions bound in the cluster: $sessions; RSS growth over all hosts per session: $((grow * 1024 / (sessions > 0 ? sessions : 1))) bytes"
    for h in "${harness[@]}"; do kill "$h" 2>/dev/null || true; done
    ;;
  *) echo "unknown knob $knob" >&2; exit 2 ;;
esac
