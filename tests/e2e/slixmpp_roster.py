"""Two slixmpp clients (a library nobody here wrote) become contacts and watch each other come and go:
both fetch their rosters, Romeo asks for Juliet's presence, slixmpp's own roster handling approves and
asks back (auto_authorize, auto_subscribe), and each then sees the other online; when Juliet leaves,
Romeo sees her go offline. Prints one line per fact for the test to check.

Usage: slixmpp_roster.py HOST PORT CAFILE ROMEO_JID ROMEO_PASSWORD JULIET_JID JULIET_PASSWORD
"""
import asyncio
import ssl
import sys

import slixmpp


class Contact(slixmpp.ClientXMPP):
    def __init__(self, name, jid, password, cafile):
        super().__init__(jid, password)
        self.name = name
        self.ssl_context = ssl.create_default_context(cafile=cafile)
        self.enable_starttls, self.enable_direct_tls, self.enable_plaintext = True, False, False
        self.ready = asyncio.Event()
        self.online = {}
        self.offline = {}
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("got_online", self.got_online)
        self.add_event_handler("got_offline", self.got_offline)
        self.add_event_handler("failed_auth", lambda _: print(self.name, "AUTH FAILED", flush=True))

    async def start(self, _):
        await self.get_roster()
        print(self.name, "ROSTER", len(self.client_roster), flush=True)
        self.send_presence()
        self.ready.set()

    def seen(self, table, jid):
        table.setdefault(jid, asyncio.Event()).set()

    def got_online(self, presence):
        print(self.name, "SAW ONLINE", presence["from"].bare, flush=True)
        self.seen(self.online, presence["from"].bare)

    def got_offline(self, presence):
        print(self.name, "SAW OFFLINE", presence["from"].bare, flush=True)
        self.seen(self.offline, presence["from"].bare)

    async def wait_for(self, table, jid):
        await table.setdefault(jid, asyncio.Event()).wait()


async def scenario(host, port, cafile, rj, rp, jj, jp):
    romeo = Contact("ROMEO", rj, rp, cafile)
    juliet = Contact("JULIET", jj, jp, cafile)
    for c in (romeo, juliet):
        c.connect(host=host, port=port)
    await asyncio.gather(romeo.ready.wait(), juliet.ready.wait())
    romeo.send_presence(pto=jj, ptype="subscribe")
    await asyncio.gather(romeo.wait_for(romeo.online, jj), juliet.wait_for(juliet.online, rj))
    await asyncio.sleep(0.3)
    print("ROMEO SUBSCRIPTION", romeo.client_roster[jj]["subscription"], flush=True)
    print("JULIET SUBSCRIPTION", juliet.client_roster[rj]["subscription"], flush=True)
    juliet.disconnect()
    await romeo.wait_for(romeo.offline, jj)
    romeo.disconnect()
    await asyncio.sleep(0.2)
    print("DONE", flush=True)


def main():
    host, port, cafile, rj, rp, jj, jp = sys.argv[1:8]
    loop = asyncio.get_event_loop()
    loop.run_until_complete(asyncio.wait_for(scenario(host, int(port), cafile, rj, rp, jj, jp), 30))


if __name__ == "__main__":
    main()
