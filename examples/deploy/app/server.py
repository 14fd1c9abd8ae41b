"""A tiny web app for the deploy example: answers its version (from the file VERSION in
its bundle) on /, and 200 on /health; listens on the port corral allocated for it."""

import http.server
import os
from pathlib import Path

VERSION = Path("VERSION").read_text().strip() if Path("VERSION").exists() else "unknown"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = (b"ok\n" if self.path == "/health"
                else f"hello from {VERSION} (pid {os.getpid()})\n".encode())
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["SERVICE_PORT_WEB"])),
                                         Handler)
server.daemon_threads = True
print(f"serving {VERSION} on port {os.environ['SERVICE_PORT_WEB']}", flush=True)
server.serve_forever()
