"""A tiny release for the deployer's docker tests: answers / with its VERSION, /health with
200 (or 500 when HEALTH=fail), and /slow?ms=N after N milliseconds."""
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

VERSION = os.environ.get("VERSION", "unknown")
HEALTHY = os.environ.get("HEALTH", "ok") != "fail"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        status = 200
        if url.path == "/health":
            status = 200 if HEALTHY else 500
        elif url.path == "/slow":
            time.sleep(int(parse_qs(url.query).get("ms", ["100"])[0]) / 1000)
        body = (VERSION + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8000"))), Handler).serve_forever()
