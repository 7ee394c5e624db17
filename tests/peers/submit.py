#!/usr/bin/env python3
"""Submits messages to an SMTP server the way the interop tests ask (Python stdlib only).

    submit.py --server HOST:PORT --from A --to B --mode MODE FILE...

Each FILE is one message's content, sent as is. Modes:
  smtplib      smtplib.SMTP.sendmail (smtplib makes line ends CRLF and stuffs dots itself)
  smtplib8bit  the same with BODY=8BITMIME (and SMTPUTF8 when the server offers it)
  pipelined    raw socket, RFC 2920: MAIL, RCPT and DATA in one write, and each message's
               end of data in the same write as the next message's MAIL/RCPT/DATA; the content
               is dot-stuffed at line starts (after CRLF only) and otherwise sent byte for byte
  bdat         raw socket, RFC 3030: the content in three BDAT chunks (the last one LAST),
               all pipelined, byte for byte; fails if the server does not offer CHUNKING
Prints one line per message, `OK <file> <reply>` or `FAIL <file> <reply>`, and exits 1 if any
failed.
"""
import argparse
import smtplib
import socket
import sys


class Raw:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=60)
        self.file = self.sock.makefile("rb")

    def reply(self):
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("connection closed")
            lines.append(line.rstrip(b"\r\n").decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(lines[0][:3]), lines

    def send(self, data):
        self.sock.sendall(data)

    def ehlo(self):
        code, lines = self.reply()
        assert code == 220, lines
        self.send(b"EHLO submit.test\r\n")
        code, lines = self.reply()
        assert code == 250, lines
        return {l[4:].split(" ")[0].upper() for l in lines[1:]}

    def close(self):
        try:
            self.send(b"QUIT\r\n")
            self.reply()
        except OSError:
            pass
        self.sock.close()


def stuff(content):
    """RFC 5321 4.5.2: a dot at the start of a line (start, or after CRLF) is doubled."""
    out = (b"." if content.startswith(b".") else b"") + content.replace(b"\r\n.", b"\r\n..")
    if not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out + b".\r\n"


def mail_params(content, keywords):
    params = ""
    if any(b >= 0x80 for b in content) and "8BITMIME" in keywords:
        params += " BODY=8BITMIME"
    return params


def run_pipelined(server, sender, to, contents, report):
    raw = Raw(*server)
    keywords = raw.ehlo()
    if "PIPELINING" not in keywords:
        raise SystemExit("the server does not offer PIPELINING")
    pending_end = None  # (file, stuffed end) of the previous message
    for name, content in contents:
        group = b""
        if pending_end is not None:
            group += pending_end[1]
        group += f"MAIL FROM:<{sender}>{mail_params(content, keywords)}\r\nRCPT TO:<{to}>\r\nDATA\r\n".encode()
        raw.send(group)
        if pending_end is not None:
            report(pending_end[0], *raw.reply())
        mail, rcpt, data = raw.reply(), raw.reply(), raw.reply()
        if mail[0] != 250 or rcpt[0] != 250 or data[0] != 354:
            report(name, 0, [str(mail), str(rcpt), str(data)])
            pending_end = None
            continue
        # The content goes out with the next group (or alone for the last message).
        pending_end = (name, stuff(content))
    if pending_end is not None:
        raw.send(pending_end[1])
        report(pending_end[0], *raw.reply())
    raw.close()


def run_bdat(server, sender, to, contents, report):
    raw = Raw(*server)
    keywords = raw.ehlo()
    if "CHUNKING" not in keywords:
        raise SystemExit("the server does not offer CHUNKING")
    for name, content in contents:
        n = len(content)
        cuts = [0, n // 3, (2 * n) // 3, n]
        group = f"MAIL FROM:<{sender}>{mail_params(content, keywords)}\r\nRCPT TO:<{to}>\r\n".encode()
        for i in range(3):
            chunk = content[cuts[i]:cuts[i + 1]]
            last = " LAST" if i == 2 else ""
            group += f"BDAT {len(chunk)}{last}\r\n".encode() + chunk
        raw.send(group)
        replies = [raw.reply() for _ in range(5)]
        if all(code == 250 for code, _ in replies):
            report(name, *replies[-1])
        else:
            report(name, 0, [str(r) for r in replies])
    raw.close()


def run_smtplib(server, sender, to, contents, report, eight_bit):
    with smtplib.SMTP(server[0], server[1], local_hostname="submit.test", timeout=60) as smtp:
        smtp.ehlo()
        options = []
        if eight_bit:
            options.append("BODY=8BITMIME")
            if smtp.has_extn("smtputf8"):
                options.append("SMTPUTF8")
        for name, content in contents:
            try:
                refused = smtp.sendmail(sender, [to], content, mail_options=options)
                report(name, 250 if not refused else 0, [str(refused)])
            except smtplib.SMTPException as e:
                report(name, 0, [repr(e)])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--from", dest="sender", required=True)
    p.add_argument("--to", required=True)
    p.add_argument("--mode", required=True, choices=["smtplib", "smtplib8bit", "pipelined", "bdat"])
    p.add_argument("files", nargs="+")
    args = p.parse_args()
    host, port = args.server.rsplit(":", 1)
    server = (host, int(port))
    contents = []
    for f in args.files:
        with open(f, "rb") as fh:
            contents.append((f, fh.read()))
    failed = []

    def report(name, code, lines):
        ok = 200 <= code < 300
        if not ok:
            failed.append(name)
        print(("OK" if ok else "FAIL"), name, " | ".join(str(l) for l in lines), flush=True)

    if args.mode == "pipelined":
        run_pipelined(server, args.sender, args.to, contents, report)
    elif args.mode == "bdat":
        run_bdat(server, args.sender, args.to, contents, report)
    else:
        run_smtplib(server, args.sender, args.to, contents, report, args.mode == "smtplib8bit")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
