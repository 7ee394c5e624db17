#!/usr/bin/env python3
"""The real-peer measurements of BENCHMARKS.md ("Real peers"): Postfix's smtp-source against
`xshadow sink`, Postfix's `smtp-sink` and `xshadow edge`, in one run, on loopback.

    python3 tests/peers/measure.py [--xshadow target/release/xshadow] [--messages 20000]
                                   [--only NAME-SUBSTRING] [--json OUT]

For every row it starts the server(s) on a free port, runs
`smtp-source -s 20 -m N -l SIZE [-d] 127.0.0.1:PORT`, and reports
  msg/s      N / wall time of smtp-source (it exits 0 only if every message got a 2xx)
  CPU        user+system time of the server process (from /proc/PID/stat), per message
  fsyncs     (edge rows with strace) fsync+fdatasync calls of the edge, per message,
             counted by `strace -f --seccomp-bpf -c -e trace=fsync,fdatasync`
Every process it starts is stopped before the next row. Needs scripts/test-deps.sh (and
strace for the fsync rows: `apt-get install strace`).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HZ = os.sysconf("SC_CLK_TCK")
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, limit=30):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{proc.args} did not listen on {port}")


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def descendants(pid):
    """pid and every process below it (strace runs the edge as its child)."""
    out = [pid]
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return out
    for c in children:
        out += descendants(int(c))
    return out


class Server:
    def __init__(self, name, argv, port, log):
        self.name = name
        self.port = port
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, "NO_COLOR": "1", "RUST_LOG": "warn"})
        wait_port(port, self.proc)
        time.sleep(0.2)

    def target_pid(self):
        """The server itself (under strace: strace's child)."""
        pids = descendants(self.proc.pid)
        return pids[-1]

    def cpu(self):
        return cpu_seconds(self.target_pid())

    def stop(self):
        """SIGTERM to the server itself (under strace: to strace's child, so that strace
        prints its summary and exits with it); SIGKILL to all after 30 s."""
        if self.proc.poll() is None:
            pids = descendants(self.proc.pid)
            os.kill(pids[-1], signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for pid in reversed(pids):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait()


def smtp_source(port, messages, size, reuse):
    argv = [SMTP_SOURCE, "-s", "20", "-m", str(messages), "-l", str(size)]
    if reuse:
        argv.append("-d")
    argv += ["-f", "load@example.org", "-t", "sink@example.net", f"127.0.0.1:{port}"]
    t = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True)
    wall = time.monotonic() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return wall, " ".join(argv)


def count_files(d):
    try:
        return sum(1 for e in os.scandir(d) if e.is_file())
    except FileNotFoundError:
        return 0


def parse_strace(path):
    calls = 0
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts and parts[-1] in ("fsync", "fdatasync"):
                # % time, seconds, usecs/call, calls, [errors], syscall
                calls += int(parts[3])
    return calls


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--xshadow", default="target/release/xshadow")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--only", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--scratch", default="", help="where spools and Maildirs go (default: target/tmp)")
    args = ap.parse_args()
    xshadow = os.path.abspath(args.xshadow)
    base = args.scratch or os.path.abspath("target/tmp")
    os.makedirs(base, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="measure-", dir=base)
    os.chmod(scratch, 0o755)  # smtp-sink -u nobody writes its dumps below it
    log = open(os.path.join(scratch, "servers.log"), "ab")
    n = args.messages
    have_strace = shutil.which("strace") is not None

    rows = []

    def row(name, size, reuse, start, check=None, strace_out=None):
        if args.only and args.only not in name:
            return
        servers = start()
        try:
            main_server = servers[0]
            before = [s.cpu() for s in servers]
            wall, cmd = smtp_source(main_server.port, n, size, reuse)
            after = [s.cpu() for s in servers]
        finally:
            for s in servers:
                s.stop()
        r = {
            "name": name,
            "size": size,
            "reuse": reuse,
            "command": cmd.replace(str(main_server.port), "PORT"),
            "msg_per_s": n / wall,
            "wall_s": wall,
            "cpu_us_per_msg": [(a - b) / n * 1e6 for a, b in zip(after, before)],
            "servers": [s.name for s in servers],
        }
        if strace_out:
            r["fsyncs_per_msg"] = parse_strace(strace_out) / n
        if check:
            r["check"] = check()
        rows.append(r)
        extra = f"  fsyncs/msg {r['fsyncs_per_msg']:.3f}" if "fsyncs_per_msg" in r else ""
        cpu = ", ".join(f"{s} {c:.0f} µs" for s, c in zip(r["servers"], r["cpu_us_per_msg"]))
        print(f"{name:58s} {r['msg_per_s']:8.0f} msg/s  CPU/msg: {cpu}{extra}  {r.get('check', '')}", flush=True)

    def start_smtp_sink(dump=None):
        def start():
            port = free_port()
            argv = [SMTP_SINK, "-u", "nobody"]
            if dump:
                os.makedirs(dump, exist_ok=True)
                os.chmod(dump, 0o777)
                argv += ["-d", f"{dump}/%M."]
            return [Server("smtp-sink", argv + [f"127.0.0.1:{port}", "1000"], port, log)]
        return start

    def start_xshadow_sink(maildir):
        def start():
            port = free_port()
            return [Server("xshadow sink", [xshadow, "sink", "--listen", f"127.0.0.1:{port}", "--maildir", maildir], port, log)]
        return start

    def start_edge(spool, ack_delay, strace_out=None):
        def start():
            downstream = start_smtp_sink()()[0]
            port = free_port()
            argv = [xshadow, "edge", "--name", "edge.measure", "--listen", f"127.0.0.1:{port}", "--spool", spool,
                    "--relay", f"127.0.0.1:{downstream.port}", "--max-ack-delay", ack_delay]
            if strace_out:
                argv = ["strace", "-f", "--seccomp-bpf", "-c", "-e", "trace=fsync,fdatasync", "-o", strace_out] + argv
            try:
                edge = Server("edge", argv, port, log)
            except Exception:
                downstream.stop()
                raise
            return [edge, downstream]
        return start

    counter = [0]

    def fresh(tag):
        counter[0] += 1
        return os.path.join(scratch, f"{counter[0]:02}-{tag}")

    for size in (1024, 100000):
        for reuse in (False, True):
            mode = f"-l {size}{' -d' if reuse else ''}"
            row(f"smtp-sink (discards)            {mode}", size, reuse, start_smtp_sink())
            d = fresh("dump")
            row(f"smtp-sink -d (dump files)       {mode}", size, reuse, start_smtp_sink(d),
                check=lambda d=d: f"[{count_files(d)} files]")
            m = fresh("maildir")
            row(f"xshadow sink (Maildir, fsync)   {mode}", size, reuse, start_xshadow_sink(m),
                check=lambda m=m: f"[{count_files(os.path.join(m, 'new'))} files]")
            for delay in ("30s", "0s"):
                s = fresh("spool")
                row(f"xshadow edge ack-delay {delay:3s} -> smtp-sink {mode}", size, reuse, start_edge(s, delay))
            if have_strace:
                s = fresh("spool")
                st = fresh("strace.txt")
                row(f"xshadow edge ack-delay 0s  strace {mode}", size, reuse, start_edge(s, "0s", st), strace_out=st)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    log.close()
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
