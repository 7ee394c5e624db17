#!/usr/bin/env python3
"""A final destination for the interop tests: aiosmtpd (default settings but SMTPUTF8 on)
that stores each message's content exactly as aiosmtpd received it (after un-stuffing).

    aiosmtpd_sink.py --listen 127.0.0.1:PORT --dir DIR

DIR/new/N.eml holds `envelope.original_content`; DIR/new/N.json the envelope. Files are
written to DIR/tmp and renamed, so a file in new/ is complete. Prints READY when listening;
exits on SIGTERM or SIGINT.
"""
import argparse
import asyncio
import itertools
import json
import os
import signal

from aiosmtpd.smtp import SMTP


class Store:
    def __init__(self, root):
        self.root = root
        self.counter = itertools.count(1)
        for sub in ("tmp", "new"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)

    def _write(self, name, data):
        tmp = os.path.join(self.root, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.root, "new", name))

    async def handle_DATA(self, server, session, envelope):
        n = next(self.counter)
        meta = {
            "helo": session.host_name,
            "mail_from": envelope.mail_from,
            "mail_options": envelope.mail_options,
            "rcpt_tos": envelope.rcpt_tos,
        }
        self._write(f"{n}.json", json.dumps(meta).encode())
        self._write(f"{n}.eml", envelope.original_content)
        return f"250 2.0.0 Ok: stored as {n}"


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    store = Store(args.dir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(store, enable_SMTPUTF8=True, hostname="aiosmtpd.test"),
        host,
        int(port),
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
