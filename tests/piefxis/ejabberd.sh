#!/usr/bin/env bash
# Starts a throw-away ejabberd (Debian's package) for example.net in a temporary directory with its own
# configuration, node name and cookie, does one of two things, and stops it. Used by
# tests/xep0227_import_export.rs; the same approach as perf/compare.sh.
#
#   tests/piefxis/ejabberd.sh export OUT    two accounts with a roster item, a vCard, private XML and an
#                                           offline message, written by `ejabberdctl export_piefxis OUT`
#   tests/piefxis/ejabberd.sh import FILE USER PASSWORD
#                                           `ejabberdctl import_piefxis FILE`, then prints the accounts,
#                                           whether USER@example.net's password is PASSWORD, its roster
#
# Exit 3 when ejabberd is not installed.
set -euo pipefail
MODE=${1:?export or import}
OUT=${2:?output directory or file to import}
command -v ejabberdctl >/dev/null || { echo "ejabberd not installed" >&2; exit 3; }
d=$(mktemp -d /tmp/rjabberd-ejabberd.XXXXXX)
node="pie$$@localhost"
mkdir -p "$d/spool" "$d/logs"
cat >"$d/ejabberd.yml" <<YML
hosts: ["example.net"]
loglevel: warning
auth_method: internal
auth_password_format: scram
acl:
  local:
    user_regexp: ""
access_rules:
  local: {allow: all}
modules:
  mod_admin_extra: {}
  mod_roster: {}
  mod_vcard: {}
  mod_private: {}
  mod_offline: {}
YML
# Its own cookie, so that it shares nothing with a system ejabberd.
printf 'ERL_OPTIONS="-setcookie %s"\n' "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$d/ejabberdctl.cfg"
cp /etc/ejabberd/inetrc "$d/" 2>/dev/null || true
chown -R ejabberd:ejabberd "$d"
EJ=(ejabberdctl --config-dir "$d" --spool "$d/spool" --logs "$d/logs" --node "$node")
stop() { "${EJ[@]}" stop >/dev/null 2>&1 || true; "${EJ[@]}" stopped >/dev/null 2>&1 || true; rm -rf "$d"; }
trap stop EXIT
(cd /tmp && "${EJ[@]}" start)
timeout 60 "${EJ[@]}" started
if [ "$MODE" = import ]; then
    # ejabberd reads the files as its own user: a copy in its directory, the included files beside.
    cp -r "$(dirname "$OUT")" "$d/import"
    chown -R ejabberd:ejabberd "$d/import"
    "${EJ[@]}" import_piefxis "$d/import/$(basename "$OUT")"
    echo "users: $("${EJ[@]}" registered_users example.net | tr '\n' ' ')"
    if "${EJ[@]}" check_password "$3" example.net "$4" >/dev/null 2>&1; then
        echo "password: right"
    else
        echo "password: wrong"
    fi
    "${EJ[@]}" get_roster "$3" example.net
    exit 0
fi
mkdir -p "$OUT"
chmod 777 "$OUT"
reg() { "${EJ[@]}" register "$@" >/dev/null; }
reg juliet example.net 'r0meo&me'
reg romeo example.net 'j<3'
"${EJ[@]}" add_rosteritem juliet example.net romeo example.net Romeo Montagues both
"${EJ[@]}" set_vcard juliet example.net FN 'Juliet Capulet'
"${EJ[@]}" private_set juliet example.net "<prefs xmlns='example:prefs'><colour>red</colour></prefs>"
"${EJ[@]}" send_message chat romeo@example.net/orchard juliet@example.net 'Hark' 'What light through yonder window breaks?'
"${EJ[@]}" export_piefxis "$OUT"
