"""What the finance story's agents share: identity lines for the harness, TLS set-up,
credential files, delegation tokens (PyJWT) and the OpenAI client.

Every process prints JSON lines on stdout: first its identity (pid, start ticks: the
harness names processes by exec id without the sensor's help), then what it did.
Configuration comes from the environment, as deployments do it:

  STORY_CA            CA certificate the agents trust (the demo network's)
  STORY_CERT/KEY      this host's server certificate (agent services)
  STORY_LLM_URL       the OpenAI-compatible endpoint, e.g. https://10.0.0.1:8443/v1
  STORY_ENV_FILE      the agent's credential file (dotenv format)
"""
import http.server
import json
import os
import ssl
import sys
import time
import uuid

import jwt  # PyJWT
import openai

MONTH = "2026-10"


def me():
    with open("/proc/self/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return {"pid": os.getpid(), "start_ticks": int(fields[19])}


def say(role, what, **kw):
    print(json.dumps({"role": role, "what": what, **me(), **kw}), flush=True)


def load_env_file(path=None):
    """A dotenv file: KEY=VALUE lines, '#' comments, optional quotes."""
    path = path or os.environ.get("STORY_ENV_FILE")
    out = {}
    if not path:
        return out
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip().strip('"').strip("'")
    return out


def client_tls():
    return ssl.create_default_context(cafile=os.environ["STORY_CA"])


def server_tls():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.environ["STORY_CERT"], os.environ["STORY_KEY"])
    return ctx


def llm(api_key):
    """The real OpenAI SDK, pointed at the demo network's endpoint, trusting its CA."""
    return openai.OpenAI(
        api_key=api_key,
        base_url=os.environ["STORY_LLM_URL"],
        http_client=openai.DefaultHttpxClient(verify=client_tls(), timeout=30.0),
        max_retries=1,
    )


def https_client():
    """An HTTPS client for agent-to-agent calls (the SDK's own httpx)."""
    return openai.DefaultHttpxClient(verify=client_tls(), timeout=60.0)


def delegation_token(key, sub, actor, upstream=None, aud="", scope="finance:read"):
    """An RFC 8693-style delegation token: `sub` is the human, `act` the agent acting
    for them, nested for each agent further up."""
    act = {"sub": actor}
    if upstream and "act" in upstream:
        act["act"] = upstream["act"]
    now = int(time.time())
    claims = {
        "iss": "https://idp.finance.example",
        "sub": sub,
        "aud": aud,
        "act": act,
        "scope": scope,
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + 600,
    }
    return jwt.encode(claims, key, algorithm="HS256")


def verify_delegation(header, key, aud):
    if not header or not header.startswith("Bearer "):
        raise PermissionError("no delegation token")
    return jwt.decode(header[len("Bearer "):], key, algorithms=["HS256"], audience=aud)


def fail(msg):
    print(json.dumps({"error": msg, **me()}), flush=True)
    sys.exit(1)


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client killed mid-request (a chain kill does that) is not news.
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)


class JsonHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with JSON bodies; subclasses implement do_POST."""
    protocol_version = "HTTP/1.1"

    def body(self):
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def serve_https(role, host, port, handler):
    """Serve `handler` over TLS with this host's certificate; announce the port."""
    srv = Server((host, port), handler)
    srv.socket = server_tls().wrap_socket(srv.socket, server_side=True)
    say(role, "listening", port=srv.server_address[1])
    srv.serve_forever()
