#!/usr/bin/env python3
"""TLS soak: a pygev TLS echo server (length-prefix, two loops) under clean load and abuse at
once, for a while, then checked.

At the same time: `loadgen -T -f 4` (40 connections x 8 frames in flight), `loadgen -T -R
-f 4` (20 connections doing full handshakes in a loop), and chaos clients that each, over
and over, pick one of: garbage bytes, a plaintext HTTP request, half a ClientHello, a good
TLS exchange, a TLS stream cut inside a record, a reset in the middle, close_notify then
leaving. Afterwards: both load generators report no error, a fresh TLS echo works, the
server's counters add up (accepted == closed once every client left), and its log holds
no panic and nothing at ERROR.

Usage: python benches/tls_soak.py [--seconds 60] [--chaos 2]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common

KINDS = ("garbage", "plain", "half_hello", "good", "truncate", "reset", "close_notify")


def chaos(port: int, until: float, seed: int, counts: dict[str, int]) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    rng = random.Random(seed)
    frame = struct.pack(">I", 60) + bytes(60)
    while time.time() < until:
        kind = rng.choice(KINDS)
        counts[kind] = counts.get(kind, 0) + 1
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if kind == "garbage":
                    sock.sendall(rng.randbytes(rng.randrange(1, 5000)))
                elif kind == "plain":
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                elif kind == "half_hello":
                    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # and no more
                    sock.sendall(hello + rng.randbytes(40))
                else:
                    tls = ctx.wrap_socket(sock, server_hostname="localhost")
                    tls.sendall(frame * rng.randrange(1, 50))
                    if kind == "good":
                        tls.recv(65536)
                    elif kind == "close_notify":
                        tls.unwrap()
                    else:
                        raw = socket.socket(fileno=tls.detach())
                        if kind == "reset":
                            linger = struct.pack("ii", 1, 0)
                            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                        else:  # a record cut short, then the end
                            raw.sendall(b"\x17\x03\x03\x40\x00" + rng.randbytes(100))
                        raw.close()
        except (OSError, ssl.SSLError):
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--chaos", type=int, default=2, help="chaos client threads")
    args = ap.parse_args()
    import trustme

    folder = tempfile.mkdtemp(prefix="pygev-tls-soak-")
    cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    cert.private_key_and_cert_chain_pem.write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    loadgen = common.build_loadgen()
    log_path = os.path.join(folder, "server.log")
    env = dict(os.environ, PYTHONPATH=os.path.join(common.REPO, "python"))
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "examples/echo.py", "--port", "0", "--loops", "2", "--framing",
             "length", "--stats", "--tls", certfile, keyfile],
            cwd=common.REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        port = 0
        for _ in range(100):
            found = re.search(r"listening on [\d.]+:(\d+)", open(log_path).read())
            if found:
                port = int(found.group(1))
                break
            time.sleep(0.1)
        assert port, "the server did not start"
        until = time.time() + args.seconds
        run = ["-p", str(port), "-T", "-d", str(args.seconds), "-w", "0", "-s", "64", "-f", "4"]
        steady = subprocess.Popen([loadgen, *run, "-c", "40", "-i", "8"], stdout=subprocess.PIPE)
        churn = subprocess.Popen([loadgen, *run, "-c", "20", "-R"], stdout=subprocess.PIPE)
        counts: dict[str, int] = {}
        threads = [threading.Thread(target=chaos, args=(port, until, n, counts))
                   for n in range(args.chaos)]
        for thread in threads:
            thread.start()
        results = [json.loads(p.communicate()[0].decode().strip().splitlines()[-1])
                   for p in (steady, churn)]
        for thread in threads:
            thread.join()
        time.sleep(2)  # every client has left
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)),
                             server_hostname="localhost") as tls:
            message = struct.pack(">I", 5) + b"after"
            tls.sendall(message)
            fresh = tls.recv(100) == message
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    text = open(log_path).read()
    stats = json.loads(re.search(r"stats (\{.*\});", text).group(1).replace("'", '"'))
    bad = [line for line in text.splitlines() if "panic" in line.lower() or " ERROR " in line]
    print(f"steady: {results[0]['messages']:,} messages, {results[0]['errors']} errors")
    print(f"churn: {results[1]['messages']:,} full handshakes, {results[1]['errors']} errors")
    print(f"chaos: {sum(counts.values()):,} connections {counts}")
    print(f"server: accepted {stats['accepted']:,}, closed {stats['closed']:,}; "
          f"a fresh echo after: {'ok' if fresh else 'FAILED'}; log lines with panic/ERROR: "
          f"{len(bad)}")
    ok = (fresh and not bad and results[0]["errors"] == 0 and results[1]["errors"] == 0
          and stats["accepted"] == stats["closed"])
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
