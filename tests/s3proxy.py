"""A fault-injecting HTTP proxy in front of an S3 endpoint, run as its own process.

    python tests/s3proxy.py --upstream 127.0.0.1:8333 --log proxy.jsonl \\
        --fault 503:every=5 --fault drop:every=13,ops=write --fault stall:every=9,max=2

It listens on 127.0.0.1 (a free port, printed as the first line of standard
output: ``listening 127.0.0.1:PORT``), forwards every request to the upstream
unchanged (the ``Host`` header too, so S3 signatures still verify) and answers
some of them with a fault instead. Each rule
``--fault KIND:every=N[,ops=A+B][,max=M][,match=TEXT][,agent=NAME]`` counts the
requests it applies to (``ops``: ``read`` = GET and HEAD, ``write`` = PUT, POST
and DELETE, ``list`` = a GET with a listing query, default all three;
``match``: a regular expression that ``path`` or ``path?query`` must contain; ``agent``: the client, the first word of
its User-Agent, e.g. ``GDAL`` or ``object_store``) and injects its fault into
every N-th of them, at most M times; the first rule that fires wins:

- ``503``: ``503 SlowDown``, as S3 answers a client that is too fast;
- ``429``: ``429 Too Many Requests``;
- ``500``: ``500 InternalError``;
- ``drop``: the request is read, then the connection is reset with no answer;
- ``stall``: the request is read, nothing is answered for ``--stall-seconds``,
  then the connection is reset (a client with a shorter timeout gives up first);
- ``403``: ``403 AccessDenied`` (a permanent error: a client must not retry it).

Every request is logged as one JSON line (``seq``: its number in order of
arrival, ``t``: its arrival in seconds since the proxy started, ``op``, ``method``, ``path``, ``query``, ``range``, ``agent``, ``fault``,
``status``, ``ms``), written once its answer is known and before the client
gets it (a retry of a stalled request may come first), so a test reads what
was injected and what was retried. It runs in a process
of its own: rasterio holds the GIL during some of GDAL's network calls, so a
proxy thread inside the process that calls GDAL would stall with it. Stopped
by SIGTERM.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KINDS = ("503", "429", "500", "drop", "stall", "403")
OPS = ("read", "write", "list")
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "expect"}
_ERRORS = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "429": (429, "TooManyRequests", "Too many requests."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "403": (403, "AccessDenied", "Access Denied"),
}


@dataclass
class Rule:
    kind: str
    every: int
    ops: tuple[str, ...] = OPS
    limit: int | None = None
    match: str = ""
    agent: str = ""
    seen: int = 0
    injected: int = 0

    def applies(self, op: str, path: str, agent: str) -> bool:
        """Count this request if it is one of the rule's; True if it gets the fault."""
        if op not in self.ops or not re.search(self.match, path) or self.agent not in ("", agent):
            return False
        self.seen += 1
        if self.seen % self.every or (self.limit is not None and self.injected >= self.limit):
            return False
        self.injected += 1
        return True


def parse_rule(text: str) -> Rule:
    kind, _, options = text.partition(":")
    if kind not in KINDS:
        raise argparse.ArgumentTypeError(f"fault kind must be one of {KINDS}, not {kind!r}")
    rule = Rule(kind, every=1)
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key == "every":
            rule.every = int(value)
        elif key == "max":
            rule.limit = int(value)
        elif key == "ops":
            rule.ops = tuple(value.split("+"))
            if not set(rule.ops) <= set(OPS):
                raise argparse.ArgumentTypeError(f"ops must be among {OPS}, not {value!r}")
        elif key == "match":
            rule.match = value
        elif key == "agent":
            rule.agent = value
        else:
            raise argparse.ArgumentTypeError(f"unknown fault option {key!r} in {text!r}")
    return rule


@dataclass
class State:
    upstream: tuple[str, int]
    rules: list[Rule]
    stall_seconds: float
    log: object
    lock: threading.Lock = field(default_factory=threading.Lock)
    seq: int = 0
    started: float = field(default_factory=time.monotonic)

    def decide(self, op: str, path: str, agent: str) -> tuple[int, str | None]:
        with self.lock:
            self.seq += 1
            for rule in self.rules:  # the first rule that fires wins
                if rule.applies(op, path, agent):
                    return self.seq, rule.kind
            return self.seq, None

    def record(self, **entry: object) -> None:
        with self.lock:
            self.log.write(json.dumps(entry) + "\n")
            self.log.flush()


def operation(method: str, query: str) -> str:
    if method in ("PUT", "POST", "DELETE"):
        return "write"
    if method == "GET" and any(k in query for k in ("list-type=", "prefix=", "delimiter=")):
        return "list"
    return "read"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State

    def log_message(self, format: str, *args: object) -> None:  # the JSON log says it all
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reset(self) -> None:
        """Close the connection with a TCP reset, no answer sent."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _handle(self) -> None:
        started = time.monotonic()
        parts = urlsplit(self.path)
        op = operation(self.command, parts.query)
        body = self._body()
        agent = (self.headers.get("User-Agent") or "-").split("/")[0].split()[0]
        target = f"{parts.path}?{parts.query}" if parts.query else parts.path
        seq, fault = self.state.decide(op, target, agent)
        entry = {"seq": seq, "t": round(started - self.state.started, 3), "op": op}
        entry |= {"method": self.command, "path": parts.path}
        entry |= {"query": parts.query, "range": self.headers.get("Range"), "agent": agent}
        entry["fault"] = fault
        # Each line is logged before the client gets its answer (or its reset), so
        # a client that has it finds it in the log.
        if fault in ("drop", "stall"):
            # (A stall is logged as it starts, with the time it will hold.)
            held = self.state.stall_seconds if fault == "stall" else 0
            self.state.record(**entry, status=None, ms=_ms(started) + round(held * 1000))
            time.sleep(held)
            self._reset()
            return
        if fault is not None:
            status, code, message = _ERRORS[fault]
            payload = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<Resource>{parts.path}</Resource><RequestId>fault-{seq}</RequestId></Error>"
            ).encode()
            self.state.record(**entry, status=status, ms=_ms(started))
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            if status in (503, 429):
                self.send_header("Retry-After", "0")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection(*self.state.upstream, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            reply = upstream.getresponse()
            data = reply.read()
            self.state.record(**entry, status=reply.status, ms=_ms(started))
            self.send_response(reply.status, reply.reason)
            for key, value in reply.getheaders():
                if key.lower() not in _HOP and key.lower() != "content-length":
                    self.send_header(key, value)
            if self.command == "HEAD":  # the object's size, with no body
                self.send_header("Content-Length", reply.getheader("Content-Length") or "0")
            else:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True, help="HOST:PORT of the S3 endpoint")
    p.add_argument("--log", required=True, help="JSON-lines log of every request")
    p.add_argument("--fault", type=parse_rule, action="append", default=[])
    p.add_argument("--stall-seconds", type=float, default=5.0)
    args = p.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    with open(args.log, "a", encoding="utf-8") as log:
        Handler.state = State((host, int(port)), args.fault, args.stall_seconds, log)
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        print(f"listening 127.0.0.1:{server.server_address[1]}", flush=True)
        server.serve_forever()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
