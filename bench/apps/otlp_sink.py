"""An OTLP/HTTP trace sink for the tracing benchmark: accepts every export and counts the
exports and their bytes, keeping nothing. It stands in for a collector that would run
on another machine, so it does not decode (Python's protobuf decoding would take the
benchmark's own CPU). Usage: python otlp_sink.py PORT"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

exports = received = 0


class Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        global exports, received
        exports += 1
        received += len(self.rfile.read(int(self.headers.get("content-length", 0))))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        body = f"{exports} {received}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
