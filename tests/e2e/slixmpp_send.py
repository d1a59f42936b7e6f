"""Sends one message with slixmpp (a client nobody here wrote) over STARTTLS and SCRAM, then exits.
Before sending, it asks the server for service discovery and pings it, through slixmpp's own XEP-0030
and XEP-0199 plugins, and prints what they got (`DISCO <features>`, `PING OK`).

Usage: slixmpp_send.py JID PASSWORD HOST PORT CAFILE TO BODY
Prints the SASL mechanism used, so the test can check it was SCRAM.
"""
import asyncio
import ssl
import sys

import slixmpp


class Sender(slixmpp.ClientXMPP):
    def __init__(self, jid, password, cafile, to, body):
        super().__init__(jid, password)
        self.ssl_context = ssl.create_default_context(cafile=cafile)
        self.to, self.body = to, body
        self.mechanism = None
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199")
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("auth_success", self.auth_success)
        self.add_event_handler("failed_auth", lambda _: self.fail("authentication failed"))
        self.ok = False

    def fail(self, why):
        print("FAIL", why, flush=True)
        self.disconnect()

    def auth_success(self, _):
        self.mechanism = self["feature_mechanisms"].mech.name

    async def start(self, _):
        self.send_presence()
        try:
            info = await self["xep_0030"].get_info(jid=self.boundjid.domain, timeout=10)
            print("DISCO", " ".join(sorted(info["disco_info"]["features"])), flush=True)
            await self["xep_0199"].send_ping(self.boundjid.domain, timeout=10)
            print("PING OK", flush=True)
        except Exception as e:  # the test reads stdout; a failure here is reported, the message still goes
            print("MODULES FAILED", repr(e), flush=True)
        self.send_message(mto=self.to, mbody=self.body, mtype="chat")
        self.ok = True
        await asyncio.sleep(0.3)
        self.disconnect()


def main():
    jid, password, host, port, cafile, to, body = sys.argv[1:8]
    x = Sender(jid, password, cafile, to, body)
    x["feature_mechanisms"].unencrypted_plain = False
    x.enable_starttls = True
    x.enable_direct_tls = False
    x.enable_plaintext = False
    x.connect(host=host, port=int(port))
    loop = asyncio.get_event_loop()
    loop.run_until_complete(asyncio.wait_for(x.disconnected, 20))
    print("MECHANISM", x.mechanism, flush=True)
    print("SENT" if x.ok else "NOT SENT", flush=True)
    sys.exit(0 if x.ok else 1)


if __name__ == "__main__":
    main()
