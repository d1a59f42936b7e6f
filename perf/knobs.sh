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
set -euo pipefail
cd "$(dirname "$0")/.."
knob=${1:?usage: perf/knobs.sh allocator|backlog|shards|tls}

cargo build --release -q -p rjabberd -p bench-harness
bench=target/release/rjabberd-bench
work=$(mktemp -d /tmp/rjabberd-knobs.XXXXXX)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true; rm -rf "$work"; }
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
  "$bench" provision --data-dir "$dir/data" --users 6000 >/dev/null
  taskset -c "${SERVER_CPUS:-0}" "$bin" --config "$dir/rjabberd.toml" > "$dir/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do grep -q "serving" "$dir/server.log" 2>/dev/null && return; sleep 0.1; done
  echo "the server did not start" >&2; cat "$dir/server.log" >&2; exit 1
}
stop() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""; }
run() { taskset -c 1 "$bench" run --server 127.0.0.1:15333 --server-pid "$server_pid" "$@"; }

case $knob in
  allocator)
    cargo build --release -q -p rjabberd --features system-allocator --target-dir target/sysalloc
    for variant in mimalloc:target/release/rjabberd system:target/sysalloc/release/rjabberd; do
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
      start target/release/rjabberd "backlog-$value" "listen_backlog = $value"
      echo "== listen_backlog $value"
      run --tls none --scenario login --users 5000 --login-concurrency 2000 --label "backlog $value" \
        | grep -E "logins:|login latency|CPU per login"
      stop
    done
    ;;
  shards)
    for n in 1 2; do
      SHARDS=$n SERVER_CPUS=$([ "$n" = 1 ] && echo 0 || echo 0,1) start target/release/rjabberd "shards-$n"
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
      start target/release/rjabberd "tls-$name" "" "[tls]
${setting#*:}"
      echo "== TLS resumption: $name"
      run --scenario login --users 3000 --tls starttls --mech scram-sha256 --label "tls $name" \
        | grep -E "logins:|login latency|CPU per login"
      stop
    done
    ;;
  *) echo "unknown knob $knob" >&2; exit 2 ;;
esac
