"""Blocking (XEP-0191) seen by slixmpp, a client library nobody here wrote: Juliet finds the feature in
the server's disco#info and blocks Romeo with slixmpp's own xep_0191 plugin; the list she reads back
holds him; his message comes back to him as an error and never reaches her; she unblocks him and his
next message arrives. Prints one line per fact for the test to check.

Usage: slixmpp_blocking.py HOST PORT CAFILE JULIET_JID JULIET_PASSWORD ROMEO_JID ROMEO_PASSWORD
"""
import asyncio
import ssl
import sys

import slixmpp


class Client(slixmpp.ClientXMPP):
    def __init__(self, name, jid, password, cafile):
        super().__init__(jid, password)
        self.name = name
        self.ssl_context = ssl.create_default_context(cafile=cafile)
        self.enable_starttls, self.enable_direct_tls, self.enable_plaintext = True, False, False
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0191")
        self.ready = asyncio.Event()
        self.messages = asyncio.Queue()
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("message", self.on_message)
        # slixmpp raises error messages as an event of their own.
        self.add_event_handler("message_error", self.on_message)
        self.add_event_handler("failed_auth", lambda _: print(self.name, "AUTH FAILED", flush=True))

    async def start(self, _):
        self.send_presence()
        self.ready.set()

    def on_message(self, msg):
        self.messages.put_nowait(msg)


async def expect(queue, who, what):
    try:
        return await asyncio.wait_for(queue.get(), 10)
    except asyncio.TimeoutError:
        print(who, "TIMED OUT WAITING FOR", what, flush=True)
        raise


async def scenario(host, port, cafile, jj, jp, rj, rp):
    juliet = Client("JULIET", jj + "/balcony", jp, cafile)
    romeo = Client("ROMEO", rj + "/garden", rp, cafile)
    for c in (juliet, romeo):
        c.connect(host=host, port=port)
    await asyncio.gather(juliet.ready.wait(), romeo.ready.wait())

    info = await juliet.plugin["xep_0030"].get_info(jid=juliet.boundjid.domain)
    if "urn:xmpp:blocking" in info["disco_info"]["features"]:
        print("DISCO BLOCKING", flush=True)
    await juliet.plugin["xep_0191"].block([rj])
    blocked = await juliet.plugin["xep_0191"].get_blocked()
    print("BLOCKLIST", " ".join(sorted(str(i["jid"]) for i in blocked["blocklist"]["items"])), flush=True)

    romeo.send_message(mto=jj, mbody="wherefore art thou", mtype="chat")
    m = await expect(romeo.messages, "ROMEO", "the error")
    print("ROMEO GOT", m["type"], m["error"]["condition"], flush=True)

    await juliet.plugin["xep_0191"].unblock([rj])
    romeo.send_message(mto=jj, mbody="it is the east", mtype="chat")
    m = await expect(juliet.messages, "JULIET", "romeo's second message")
    # Only the message sent after the unblock reached her.
    print("JULIET GOT", m["from"].bare, m["body"], juliet.messages.qsize(), flush=True)
    for c in (juliet, romeo):
        c.disconnect()
    await asyncio.sleep(0.2)
    print("DONE", flush=True)


def main():
    host, port, cafile, jj, jp, rj, rp = sys.argv[1:8]
    loop = asyncio.get_event_loop()
    loop.run_until_complete(asyncio.wait_for(scenario(host, int(port), cafile, jj, jp, rj, rp), 40))


if __name__ == "__main__":
    main()
