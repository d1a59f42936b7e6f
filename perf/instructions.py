#!/usr/bin/env python3
"""Instructions per message: the server's user-space instruction count (valgrind's callgrind, `Ir`)
spent while it carries a chat load (or, with `--scenario presence --contacts K`, presence updates to K
contacts each), divided by the messages (presence deliveries) carried. Unlike CPU time it does not move
with what else the machine is doing, so an A/B of a change on this shared VM is a single run each.

    perf/instructions.py [--rate R] [--duration S] [--users N] [--runs K]
                         [--scenario chat|presence] [--contacts K] [--carbons]
                         [--extra-config TOML] BINARY [BINARY…]

Each binary is run K times in alternation (one shard, plaintext, 127.0.0.1, its own temporary data
directory with N users provisioned by `rjabberd-bench provision`), under callgrind; `rjabberd-bench run
--scenario chat` logs the users in, and the counters are zeroed at second 1 of the chat and dumped at the
last second, so logins and the disconnects at the end are not counted. Needs valgrind (Debian) and a
release build (`cargo build --release -p rjabberd -p bench-harness`).
"""
import argparse
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "target/release/rjabberd-bench")


def run_once(binary, port, args):
    d = tempfile.mkdtemp(prefix="rjabberd-instructions-")
    with open(f"{d}/rjabberd.toml", "w") as f:
        f.write(
            f'shards = 1\ndata_dir = "{d}/data"\nlog_level = "warn"\n[[host]]\nname = "localhost"\n'
            f'[[listener]]\naddress = "127.0.0.1:{port}"\n[limits]\nmax_sessions_per_user = 10\n'
            "[auth]\nallow_plaintext = true\n" + args.extra_config.replace("\\n", "\n") + "\n"
        )
    provision = [BENCH, "provision", "--data-dir", f"{d}/data", "--users", str(args.users)]
    if args.contacts:
        provision += ["--contacts", str(args.contacts)]
    subprocess.run(provision, check=True, stdout=subprocess.DEVNULL)
    log = open(f"{d}/server.log", "w")
    server = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.out",
                               binary, "--config", f"{d}/rjabberd.toml"], stdout=log, stderr=subprocess.STDOUT)
    for _ in range(1200):
        if "listening on" in open(f"{d}/server.log").read():
            break
        if server.poll() is not None:
            sys.exit(f"{binary} did not start: see {d}/server.log")
        time.sleep(0.1)
    harness = subprocess.Popen([BENCH, "run", "--scenario", args.scenario, "--users", str(args.users), "--rate",
                                str(args.rate), "--duration", str(args.duration), "--server",
                                f"127.0.0.1:{port}", "--server-pid", str(server.pid)]
                               + (["--contacts", str(args.contacts)] if args.contacts else [])
                               + (["--carbons"] if args.carbons else []),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = last = None
    for line in harness.stdout:
        m = re.search(r"chat at \d+/s: (\d+) s: sent (\d+)", line)
        if not m:
            continue
        second, sent = int(m.group(1)), int(m.group(2))
        if second == 1 and first is None:
            subprocess.run(["callgrind_control", "-z", str(server.pid)], capture_output=True)
            first = sent
        if second == args.duration and last is None:
            subprocess.run(["callgrind_control", "-d", str(server.pid)], capture_output=True)
            last = sent
    harness.wait()
    server.send_signal(signal.SIGTERM)
    server.wait()
    if first is None or last is None:
        sys.exit(f"the chat did not run its course: see {d}")
    for dump in sorted(glob.glob(f"{d}/cg.out.*")):
        for line in open(dump):
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1]), last - first
    sys.exit(f"no callgrind dump in {d}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binaries", nargs="+")
    p.add_argument("--rate", type=int, default=100)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--users", type=int, default=100)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--scenario", default="chat", choices=["chat", "presence"])
    p.add_argument("--contacts", type=int, default=0)
    p.add_argument("--carbons", action="store_true", help="every session enables XEP-0280 carbons")
    p.add_argument("--extra-config", default="",
                   help="TOML appended to the server's configuration (\\n for a newline), e.g. "
                        "'[metrics]\\nlatency_sample = 0'")
    args = p.parse_args()
    port = 36400
    results = {b: [] for b in args.binaries}
    for _ in range(args.runs):
        for b in args.binaries:
            port += 1
            ir, messages = run_once(b, port, args)
            results[b].append(ir / messages)
            print(f"{b}: {ir} instructions over {messages} messages = {ir / messages:.0f} per message", flush=True)
    print()
    for b, v in results.items():
        print(f"{b}: mean {sum(v) / len(v):.0f} instructions per message over {len(v)} runs "
              f"({', '.join(f'{x:.0f}' for x in v)})")


if __name__ == "__main__":
    main()
