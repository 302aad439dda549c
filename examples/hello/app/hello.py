#!/usr/bin/env python3
"""hello: the sample application Slipway builds, packages and deploys.

GET /health answers 200 "ok"; GET / reports the running version as JSON.
The port comes from PORT (default 8000); the version from HELLO_VERSION, else the file
/usr/share/hello/VERSION written by the packager, else "dev".
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION_FILE = "/usr/share/hello/VERSION"


def read_version(environ=os.environ, version_file=VERSION_FILE):
    """The version this process reports."""
    version = environ.get("HELLO_VERSION", "").strip()
    if version:
        return version
    try:
        with open(version_file, encoding="utf-8") as handle:
            version = handle.read().strip()
    except OSError:
        version = ""
    return version or "dev"


class HelloHandler(BaseHTTPRequestHandler):
    server_version = "hello"

    def do_GET(self):
        if self.path == "/health":
            self.respond(200, "text/plain; charset=utf-8", b"ok")
        elif self.path == "/":
            body = {"app": "hello", "version": read_version()}
            self.respond(200, "application/json", json.dumps(body).encode())
        else:
            self.respond(404, "text/plain; charset=utf-8", b"not found")

    def respond(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        # One line per request on stderr, which journald keeps.
        super().log_message(format, *args)


def serve(port=None):
    port = int(port if port is not None else os.environ.get("PORT", "8000"))
    server = ThreadingHTTPServer(("0.0.0.0", port), HelloHandler)
    return server


if __name__ == "__main__":
    httpd = serve()
    print(f"hello {read_version()} listening on port {httpd.server_address[1]}", flush=True)
    httpd.serve_forever()
