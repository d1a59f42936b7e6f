"""An external component (XEP-0114) written with slixmpp's ComponentXMPP, a library nobody here wrote.

Usage: slixmpp_component.py HOST PORT DOMAIN SECRET GREET_JID
Connects, sends "component online" from echo@DOMAIN to GREET_JID, answers the first message it gets
with "echo: <body>", then disconnects and exits 0; exits 1 if that does not happen within 20 s.
"""
import asyncio
import sys

from slixmpp.componentxmpp import ComponentXMPP


class Echo(ComponentXMPP):
    def __init__(self, domain, secret, host, port, greet):
        super().__init__(domain, secret, host, port)
        self.domain, self.greet = domain, greet
        self.answered = False
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("message", self.message)

    async def start(self, _):
        self.send_message(mto=self.greet, mfrom="echo@" + self.domain, mbody="component online",
                          mtype="chat")

    def message(self, msg):
        if msg["type"] in ("chat", "normal") and not self.answered:
            self.answered = True
            msg.reply("echo: " + msg["body"]).send()
            asyncio.get_event_loop().call_later(0.3, self.disconnect)


def main():
    host, port, domain, secret, greet = sys.argv[1:6]
    xmpp = Echo(domain, secret, host, int(port), greet)
    xmpp.connect()
    loop = asyncio.get_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(xmpp.disconnected, 20))
    except asyncio.TimeoutError:
        print("FAIL: no exchange within 20 s", flush=True)
        sys.exit(1)
    sys.exit(0 if xmpp.answered else 1)


if __name__ == "__main__":
    main()
