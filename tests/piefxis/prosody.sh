#!/usr/bin/env bash
# Fills a throw-away Prosody data directory (Debian's package, a private configuration and data_path in
# a temporary directory, no server started) and turns it into XEP-0227 files with Prosody's own
# migrator, the way docs/storage.md tells an operator to. Used by tests/xep0227_import_export.rs.
#
#   tests/piefxis/prosody.sh OUT    writes one <user>@<host>.xml per account into OUT:
#     example.net (internal_hashed, so SCRAM-SHA-1 keys): juliet ('r0meo&me') with a roster (romeo,
#       named and grouped, both ways; nurse asked for; a pending request from paris), a vCard and
#       private XML, all written in Prosody's internal store format; romeo ('j<3') with nothing else
#     localhost (internal_hashed with password_hash = "SHA-256"): nurse ('n0 secret'), whose
#       SHA-256 keys the migrator labels SCRAM-SHA-1
#
# Accounts are made by `prosodyctl register`; the rest is written as mod_roster, mod_vcard and
# mod_private store it (data/<host>/<store>/<user>.dat, names %-encoded) since prosodyctl has no
# command for it. The migrator is Debian's /usr/bin/prosody-migrator with one line changed: its data
# directory, which is where mod_storage_xep0227 writes (it ignores the migrator config's paths), from
# /var/lib/prosody to the temporary directory. As root, prosodyctl and the migrator switch to the
# `prosody` user, so the directory is handed to it.
#
# Exit 3 when Prosody is not installed.
set -euo pipefail
OUT=${1:?output directory}
MIGRATOR=/usr/bin/prosody-migrator
command -v prosodyctl >/dev/null && [ -x "$MIGRATOR" ] || { echo "prosody not installed" >&2; exit 3; }
d=$(mktemp -d /tmp/rjabberd-prosody.XXXXXX)
trap 'rm -rf "$d"' EXIT
# Prosody's datamanager encodes every byte outside [A-Za-z0-9] of a path component as %xx.
enc() {
    local s=$1 out='' c i
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        case $c in
        [A-Za-z0-9]) out+=$c ;;
        *) out+=$(printf '%%%02x' "'$c") ;;
        esac
    done
    printf '%s' "$out"
}
# An empty certs directory beside the configuration: without it prosodyctl logs an error (it looks for
# certificates there), though nothing here needs one.
mkdir -p "$d/data" "$d/certs" "$d/xep0227"
cat >"$d/prosody.cfg.lua" <<LUA
data_path = "$d/data"
pidfile = "$d/prosody.pid"
log = { error = "*console" }
storage = "internal"
authentication = "internal_hashed"
modules_enabled = { "roster", "vcard", "private" }
VirtualHost "example.net"
VirtualHost "localhost"
    password_hash = "SHA-256"
LUA
store() { # HOST STORE USER: the file a module's keyval store keeps USER's data in
    mkdir -p "$d/data/$(enc "$1")/$2"
    echo "$d/data/$(enc "$1")/$2/$(enc "$3").dat"
}
cat >"$(store example.net roster juliet)" <<'LUA'
return {
	[false] = {
		["version"] = 3;
		["pending"] = { ["paris@example.net"] = true; };
	};
	["romeo@example.net"] = {
		["subscription"] = "both";
		["name"] = "Romeo";
		["groups"] = { ["Montagues"] = true; };
	};
	["nurse@localhost"] = {
		["subscription"] = "none";
		["ask"] = "subscribe";
		["groups"] = {};
	};
};
LUA
cat >"$(store example.net vcard juliet)" <<'LUA'
return {
	["name"] = "vCard";
	["attr"] = { ["xmlns"] = "vcard-temp"; };
	{ ["name"] = "FN"; ["attr"] = {}; "Juliet Capulet"; };
	{ ["name"] = "NICKNAME"; ["attr"] = {}; "Jules & co"; };
};
LUA
cat >"$(store example.net private juliet)" <<'LUA'
return {
	["prefs:example:prefs"] = {
		["name"] = "prefs";
		["attr"] = { ["xmlns"] = "example:prefs"; };
		{ ["name"] = "colour"; ["attr"] = {}; "red"; };
	};
};
LUA
# The stores mod_storage_xep0227 (0.12) has a handler for; the migrator stops at any other. Accounts
# come first: the other handlers only add to a user's file that exists.
cat >"$d/migrator.cfg.lua" <<LUA
local stores = { "accounts", "roster", "vcard", "private" }
input {
	type = "internal";
	path = "$d/data";
	hosts = { ["example.net"] = stores; ["localhost"] = stores };
}
output {
	type = "xep0227";
}
LUA
sed "s|^CFG_DATADIR=.*|CFG_DATADIR='$d/xep0227';|" "$MIGRATOR" >"$d/prosody-migrator"
grep -q "^CFG_DATADIR='$d/xep0227';" "$d/prosody-migrator" || { echo "$MIGRATOR has no CFG_DATADIR line" >&2; exit 1; }
chmod +x "$d/prosody-migrator"
[ "$(id -u)" = 0 ] && chown -R prosody:prosody "$d"

ctl() { prosodyctl --config "$d/prosody.cfg.lua" "$@"; }
ctl register juliet example.net 'r0meo&me'
ctl register romeo example.net 'j<3'
ctl register nurse localhost 'n0 secret'
# The migrator's progress goes to stdout and stderr; only a failure shows it.
if ! log=$(cd "$d" && "$d/prosody-migrator" --config "$d/migrator.cfg.lua" input output 2>&1); then
    echo "$log" >&2
    exit 1
fi
mkdir -p "$OUT"
cp "$d"/xep0227/*.xml "$OUT"/
ls "$OUT"
