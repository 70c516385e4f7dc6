"""A local HTTPS server for tests: answers the OpenAI chat-completions API with a
scripted tool call, and any other path with a small JSON body. Prints its port.

Usage: tls_server.py CERT KEY [REQUEST_LOG]; with REQUEST_LOG, the request line of
every request received ("METHOD PATH") is appended to that file as soon as it is read,
so a test can tell that a request never arrived."""
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

cert, key = sys.argv[1], sys.argv[2]
request_log = sys.argv[3] if len(sys.argv) > 3 else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def parse_request(self):
        ok = super().parse_request()
        if request_log and self.command:
            with open(request_log, "a") as f:
                f.write(f"{self.command} {self.path}\n")
        return ok

    def _send(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send({"ok": True, "path": self.path})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        req = json.loads(self.rfile.read(n) or b"{}")
        if self.path.endswith("/chat/completions"):
            self._send({
                "id": "chatcmpl-test", "object": "chat.completion", "model": req.get("model", ""),
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": None,
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {
                        "name": "read_ledger", "arguments": json.dumps({"month": "2026-10"})}}]}}],
            })
        else:
            self._send({"ok": True})


srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
