#!/usr/bin/env python3
# The external authentication example of the ejabberd Developers Guide (§4.0.1), corrected: as printed,
# to_ejabberd() builds its answer but never writes it, and it reads text where the protocol is bytes.
# The accounts are a small table so a test can tell success from failure; the commands ejabberd sends
# today beyond the guide's three (tryregister, removeuser, removeuser3) are answered too. Every request
# is appended, raw, to requests.log beside this script, so a test can check the frames byte for byte.
# Test hooks: the password "sleep" never answers (the server's timeout), "die" exits without answering,
# "garble" answers something that is not a 2-byte result.
import os
import sys
import time
from struct import pack, unpack

USERS = {"alice": "wonderland", "carol": "c4r0l:with:colons"}
LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requests.log")


def from_ejabberd():
    input_length = sys.stdin.buffer.read(2)
    if len(input_length) < 2:
        sys.exit(0)
    (size,) = unpack('>h', input_length)
    data = sys.stdin.buffer.read(size)
    with open(LOG, "ab") as log:
        log.write(input_length + data + b"\n")
    return data.decode("utf-8").split(':', 3)


def to_ejabberd(bool):
    answer = 0
    if bool:
        answer = 1
    token = pack('>hh', 2, answer)
    sys.stdout.buffer.write(token)
    sys.stdout.buffer.flush()


def auth(username, server, password):
    if password == "sleep":
        time.sleep(30)
    if password == "die":
        sys.exit(1)
    if password == "garble":
        sys.stdout.buffer.write(pack('>h', 5) + b"hello")
        sys.stdout.buffer.flush()
        time.sleep(30)
    return USERS.get(username) == password


def isuser(username, server):
    return username in USERS


def setpass(username, server, password):
    if username not in USERS:
        return False
    USERS[username] = password
    return True


def tryregister(username, server, password):
    if username in USERS:
        return False
    USERS[username] = password
    return True


def removeuser(username, server):
    return USERS.pop(username, None) is not None


def removeuser3(username, server, password):
    if USERS.get(username) != password:
        return False
    del USERS[username]
    return True


while True:
    data = from_ejabberd()
    success = False
    if data[0] == "auth":
        success = auth(data[1], data[2], data[3])
    elif data[0] == "isuser":
        success = isuser(data[1], data[2])
    elif data[0] == "setpass":
        success = setpass(data[1], data[2], data[3])
    elif data[0] == "tryregister":
        success = tryregister(data[1], data[2], data[3])
    elif data[0] == "removeuser":
        success = removeuser(data[1], data[2])
    elif data[0] == "removeuser3":
        success = removeuser3(data[1], data[2], data[3])
    to_ejabberd(success)
