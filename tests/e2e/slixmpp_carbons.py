"""Message carbons (XEP-0280) seen by slixmpp, a client library nobody here wrote: two clients of one
account (a phone and a laptop) find the feature in the server's disco#info and enable carbons with
slixmpp's own xep_0280 plugin; a third account writes to the phone's full JID, and the laptop gets the
`received` copy; the phone answers, and the laptop gets the `sent` copy. The phone, which had the
original and sent the answer, gets no copy. Prints one line per fact for the test to check.

Usage: slixmpp_carbons.py HOST PORT CAFILE ALICE_JID ALICE_PASSWORD BOB_JID BOB_PASSWORD
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
        self.register_plugin("xep_0280")
        self.ready = asyncio.Event()
        self.messages = asyncio.Queue()
        self.carbons = asyncio.Queue()
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("carbon_received", lambda m: self.carbons.put_nowait(("RECEIVED", m)))
        self.add_event_handler("carbon_sent", lambda m: self.carbons.put_nowait(("SENT", m)))
        self.add_event_handler("failed_auth", lambda _: print(self.name, "AUTH FAILED", flush=True))

    async def start(self, _):
        self.send_presence()
        self.ready.set()

    def on_message(self, msg):
        # Carbons arrive as messages too; slixmpp's plugin raises its own events for them.
        for wrapper in ("received", "sent"):
            if msg.xml.find("{urn:xmpp:carbons:2}" + wrapper) is not None:
                return
        if msg["body"]:
            self.messages.put_nowait(msg)


async def expect(queue, who, what):
    try:
        return await asyncio.wait_for(queue.get(), 10)
    except asyncio.TimeoutError:
        print(who, "TIMED OUT WAITING FOR", what, flush=True)
        raise


async def scenario(host, port, cafile, aj, ap, bj, bp):
    phone = Client("PHONE", aj + "/phone", ap, cafile)
    laptop = Client("LAPTOP", aj + "/laptop", ap, cafile)
    bob = Client("BOB", bj + "/desk", bp, cafile)
    for c in (phone, laptop, bob):
        c.connect(host=host, port=port)
    await asyncio.gather(phone.ready.wait(), laptop.ready.wait(), bob.ready.wait())

    info = await phone.plugin["xep_0030"].get_info(jid=phone.boundjid.domain)
    if "urn:xmpp:carbons:2" in info["disco_info"]["features"]:
        print("DISCO CARBONS", flush=True)
    for c in (phone, laptop):
        await c.plugin["xep_0280"].enable()
        print(c.name, "CARBONS ENABLED", flush=True)

    # Received: Bob writes to the phone's full JID; the laptop gets the copy.
    bob.send_message(mto=phone.boundjid, mbody="wherefore art thou", mtype="chat")
    m = await expect(phone.messages, "PHONE", "bob's message")
    print("PHONE GOT", m["from"].bare, m["body"], flush=True)
    kind, c = await expect(laptop.carbons, "LAPTOP", "a received carbon")
    fwd = c["carbon_received"]
    print("LAPTOP GOT", kind, "FROM", fwd["from"].bare, "TO", fwd["to"], "BODY", fwd["body"], flush=True)

    # Sent: the phone answers; the laptop gets the copy, Bob the message.
    phone.send_message(mto=bob.boundjid.bare, mbody="deny thy father", mtype="chat")
    m = await expect(bob.messages, "BOB", "the answer")
    print("BOB GOT", m["from"], m["body"], flush=True)
    kind, c = await expect(laptop.carbons, "LAPTOP", "a sent carbon")
    fwd = c["carbon_sent"]
    print("LAPTOP GOT", kind, "FROM", fwd["from"], "TO", fwd["to"], "BODY", fwd["body"], flush=True)

    # A disco round trip on the phone: any copy written to it would have arrived before the answer.
    await phone.plugin["xep_0030"].get_info(jid=phone.boundjid.domain)
    await asyncio.sleep(0.3)
    print("PHONE CARBONS", phone.carbons.qsize(), flush=True)
    print("LAPTOP MESSAGES", laptop.messages.qsize(), flush=True)
    for c in (phone, laptop, bob):
        c.disconnect()
    await asyncio.sleep(0.2)
    print("DONE", flush=True)


def main():
    host, port, cafile, aj, ap, bj, bp = sys.argv[1:8]
    loop = asyncio.get_event_loop()
    loop.run_until_complete(asyncio.wait_for(scenario(host, int(port), cafile, aj, ap, bj, bp), 40))


if __name__ == "__main__":
    main()
