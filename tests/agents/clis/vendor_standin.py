"""A local HTTPS stand-in of the three coding-agent vendors' APIs, so the real CLIs
(Claude Code, Codex, Gemini CLI) run their own HTTP, TLS and tool code against it.

    vendor_standin.py --cert PEM --key PEM --record FILE --cat PATH --final TEXT

It prints the port it listens on (127.0.0.1 and ::1, the same port) as its
first line, then serves until killed. ALPN offers h2 and http/1.1 (hypercorn), so a
client that negotiates HTTP/2 (Codex does) gets it.

Each vendor's streaming API is spoken the way its SDK expects it (server-sent
events): the first model request of a conversation is answered with one shell tool
call that runs `cat PATH`; the follow-up request, which carries the tool's result,
is answered with TEXT. Requests that are not the conversation's main turn (Claude
Code's preconnect `HEAD /`, a request without the shell tool, a JSON-mode side
question) get a short, well-formed answer so the CLI carries on.

Every request received is appended to FILE as one JSON line: HTTP version, method,
path, headers, body. The values of credential headers are replaced by their SHA-256
(`sha256:<hex>`), so the record proves which key arrived without holding it.
"""
import argparse
import asyncio
import gzip
import hashlib
import json
import socket
import sys
import uuid
import zlib

from hypercorn.asyncio import serve
from hypercorn.config import Config

# Headers whose values are secrets: recorded only as digests.
SECRET_HEADERS = {"authorization", "x-api-key", "x-goog-api-key", "proxy-authorization", "cookie"}


def digest(value):
    """`sha256:<hex>` of a secret; an auth scheme (`Bearer`) stays in front."""
    scheme, sep, token = value.partition(" ")
    if sep and scheme.lower() in ("bearer", "basic"):
        return f"{scheme} sha256:" + hashlib.sha256(token.encode()).hexdigest()
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def sse(events):
    """Anthropic and OpenAI style: `event:` lines naming each payload's type."""
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


def sse_data(payloads):
    """Gemini style: `data:` lines only."""
    return [f"data: {json.dumps(p)}\r\n\r\n".encode() for p in payloads]


def ident(prefix):
    return prefix + uuid.uuid4().hex[:24]


class Standin:
    def __init__(self, record, cat, final):
        self.record_path = record
        self.cat = cat
        self.final = final

    # -- the ASGI application ---------------------------------------------------------

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        text, decode_error = decode_body(body, dict(headers).get("content-encoding", ""))
        path = scope["path"] + ("?" + scope["query_string"].decode() if scope["query_string"] else "")
        self.record({
            "http_version": scope["http_version"],
            "method": scope["method"],
            "path": path,
            "headers": [[k, digest(v) if k in SECRET_HEADERS else v] for k, v in headers],
            "body": text,
            "body_len": len(body),
            "decode_error": decode_error,
        })
        try:
            req = json.loads(text) if text.strip() else {}
        except ValueError:
            req = {}
        status, ctype, chunks = self.answer(scope["method"], scope["path"], scope["query_string"].decode(), req)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype.encode()), (b"cache-control", b"no-cache")]})
        if scope["method"] == "HEAD":
            chunks = []
        for c in chunks:
            await send({"type": "http.response.body", "body": c, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def record(self, entry):
        with open(self.record_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    # -- routing ------------------------------------------------------------------------

    def answer(self, method, path, query, req):
        if method in ("HEAD", "GET") and path in ("/", ""):
            return 200, "text/plain", [b"ok"]
        if method == "POST" and path.endswith("/messages"):
            return self.anthropic(req)
        if method == "POST" and path.endswith("/messages/count_tokens"):
            return 200, "application/json", [json.dumps({"input_tokens": 100}).encode()]
        if method == "POST" and path.endswith("/responses"):
            return self.openai(req)
        if method == "GET" and path.endswith("/models"):
            return 200, "application/json", [json.dumps({"object": "list", "data": []}).encode()]
        if method == "POST" and ":streamGenerateContent" in path:
            return self.gemini(req, stream=True)
        if method == "POST" and ":generateContent" in path:
            return self.gemini(req, stream=False)
        if method == "POST" and ":countTokens" in path:
            return 200, "application/json", [json.dumps({"totalTokens": 100}).encode()]
        return 404, "application/json", [json.dumps({"error": {"message": f"no {method} {path}"}}).encode()]

    # -- Anthropic Messages -------------------------------------------------------------

    def anthropic(self, req):
        model = req.get("model", "claude-sonnet-4-5")
        offered = {t.get("name") for t in req.get("tools") or []}
        followup = any(
            isinstance(b, dict) and b.get("type") == "tool_result"
            for m in req.get("messages") or [] if isinstance(m.get("content"), list)
            for b in m["content"])
        if "Bash" in offered and not followup:
            block = {"type": "tool_use", "id": ident("toolu_"), "name": "Bash", "input": {}}
            args = json.dumps({"command": f"cat {self.cat}", "description": "Show the file"})
            deltas = [{"type": "input_json_delta", "partial_json": args[:len(args) // 2]},
                      {"type": "input_json_delta", "partial_json": args[len(args) // 2:]}]
            stop = "tool_use"
        else:
            text = self.final if followup else "OK"
            block = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": text}]
            stop = "end_turn"
        msg_id = ident("msg_")
        if not req.get("stream"):
            content = ({"type": "text", "text": deltas[0]["text"]} if block["type"] == "text"
                       else dict(block, input=json.loads("".join(d["partial_json"] for d in deltas))))
            return 200, "application/json", [json.dumps({
                "id": msg_id, "type": "message", "role": "assistant", "model": model,
                "content": [content], "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": 100, "output_tokens": 20}}).encode()]
        events = [
            {"type": "message_start", "message": {
                "id": msg_id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": 100, "output_tokens": 1}}},
            {"type": "content_block_start", "index": 0, "content_block": block},
            *({"type": "content_block_delta", "index": 0, "delta": d} for d in deltas),
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
             "usage": {"output_tokens": 20}},
            {"type": "message_stop"},
        ]
        return 200, "text/event-stream", sse(events)

    # -- OpenAI Responses ---------------------------------------------------------------

    def openai(self, req):
        model = req.get("model", "gpt-5")
        items = req.get("input") if isinstance(req.get("input"), list) else []
        # Tools are listed at the top, or (some models) in an `additional_tools` input
        # item, possibly grouped in namespaces.
        offered = set(tool_names(req.get("tools")))
        for i in items:
            if isinstance(i, dict) and i.get("type") == "additional_tools":
                offered.update(tool_names(i.get("tools")))
        followup = any(isinstance(i, dict) and i.get("type") == "function_call_output" for i in items)
        resp_id = ident("resp_")
        if not followup and offered & {"exec_command", "shell", "shell_command"}:
            if "exec_command" in offered:
                name, args = "exec_command", {"cmd": f"cat {self.cat}"}
            elif "shell_command" in offered:
                name, args = "shell_command", {"command": f"cat {self.cat}"}
            else:
                name, args = "shell", {"command": ["bash", "-lc", f"cat {self.cat}"]}
            full = json.dumps(args)
            item = {"type": "function_call", "id": ident("fc_"), "call_id": ident("call_"),
                    "name": name, "arguments": "", "status": "in_progress"}
            done = dict(item, arguments=full, status="completed")
            middle = [
                {"type": "response.function_call_arguments.delta", "item_id": item["id"],
                 "output_index": 0, "delta": full[:len(full) // 2]},
                {"type": "response.function_call_arguments.delta", "item_id": item["id"],
                 "output_index": 0, "delta": full[len(full) // 2:]},
                {"type": "response.function_call_arguments.done", "item_id": item["id"],
                 "output_index": 0, "arguments": full},
            ]
        else:
            text = self.final if followup else "OK"
            item = {"type": "message", "id": ident("msg_"), "role": "assistant",
                    "status": "in_progress", "content": []}
            part = {"type": "output_text", "text": "", "annotations": []}
            done = dict(item, status="completed", content=[dict(part, text=text)])
            at = {"item_id": item["id"], "output_index": 0, "content_index": 0}
            middle = [
                {"type": "response.content_part.added", **at, "part": part},
                {"type": "response.output_text.delta", **at, "delta": text},
                {"type": "response.output_text.done", **at, "text": text},
                {"type": "response.content_part.done", **at, "part": dict(part, text=text)},
            ]
        base = {"id": resp_id, "object": "response", "model": model}
        usage = {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": 120}
        events = [
            {"type": "response.created", "response": dict(base, status="in_progress", output=[])},
            {"type": "response.output_item.added", "output_index": 0, "item": item},
            *middle,
            {"type": "response.output_item.done", "output_index": 0, "item": done},
            {"type": "response.completed",
             "response": dict(base, status="completed", output=[done], usage=usage)},
        ]
        for seq, e in enumerate(events):
            e["sequence_number"] = seq
        return 200, "text/event-stream", sse(events)

    # -- Gemini generateContent ---------------------------------------------------------

    def gemini(self, req, stream):
        offered = {
            f.get("name")
            for t in req.get("tools") or [] if isinstance(t, dict)
            for f in t.get("functionDeclarations") or []}
        followup = any(
            isinstance(p, dict) and "functionResponse" in p
            for c in req.get("contents") or [] for p in c.get("parts") or [])
        json_mode = (req.get("generationConfig") or {}).get("responseMimeType") == "application/json"
        if "run_shell_command" in offered and not followup:
            parts = [{"functionCall": {"name": "run_shell_command", "args": {
                "command": f"cat {self.cat}", "description": "Show the file"}}}]
        elif json_mode:
            # Side questions in JSON mode (e.g. who speaks next): the user.
            parts = [{"text": json.dumps({"reasoning": "The answer is complete.", "next_speaker": "user"})}]
        else:
            parts = [{"text": self.final if followup else "OK"}]
        payload = {
            "candidates": [{"content": {"role": "model", "parts": parts},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 20,
                              "totalTokenCount": 120},
            "modelVersion": "gemini-2.5-flash",
            "responseId": ident(""),
        }
        if stream:
            return 200, "text/event-stream", sse_data([payload])
        return 200, "application/json", [json.dumps(payload).encode()]


def tool_names(tools):
    """Names of OpenAI tool definitions, descending into namespaces."""
    for t in tools if isinstance(tools, list) else []:
        if isinstance(t, dict):
            yield t.get("name")
            yield from tool_names(t.get("tools"))


def decode_body(body, encoding):
    """The body as text (decompressed when the client compressed it), and an error
    description when that failed (the raw bytes are then kept as latin-1)."""
    try:
        enc = encoding.strip().lower()
        if enc == "gzip":
            body = gzip.decompress(body)
        elif enc == "deflate":
            body = zlib.decompress(body)
        elif enc == "zstd":
            import zstandard  # only when a client compresses with zstd
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        elif enc not in ("", "identity"):
            return body.decode("latin-1"), f"unknown content-encoding {enc!r}"
        return body.decode("utf-8"), None
    except Exception as e:  # noqa: BLE001 - any failure is recorded, never fatal
        return body.decode("latin-1"), f"{type(e).__name__}: {e}"


def loopback_sockets():
    """Listening sockets on 127.0.0.1 and ::1 with one port (`localhost` may resolve
    to either); loopback only, never a routable address. ::1 is skipped where the
    namespace has no IPv6."""
    for _ in range(20):
        v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        v4.bind(("127.0.0.1", 0))
        port = v4.getsockname()[1]
        try:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v6.bind(("::1", port))
        except OSError as e:
            v4.close()
            if e.errno == 99:  # EADDRNOTAVAIL: no IPv6 loopback here
                v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                v4.bind(("127.0.0.1", 0))
                socks = [v4]
                break
            continue  # the port is taken on ::1: try another
        socks = [v4, v6]
        break
    else:
        raise SystemExit("no free loopback port on both 127.0.0.1 and ::1")
    for s in socks:
        s.listen(64)
        s.set_inheritable(True)
    return socks


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--record", required=True, help="JSON-lines file of received requests")
    ap.add_argument("--cat", required=True, help="file the tool call cats")
    ap.add_argument("--final", required=True, help="text of the final answer")
    a = ap.parse_args()

    socks = loopback_sockets()
    print(socks[0].getsockname()[1], flush=True)

    config = Config()
    config.bind = [f"fd://{s.fileno()}" for s in socks]
    config.certfile = a.cert
    config.keyfile = a.key
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    config.keep_alive_timeout = 30
    asyncio.run(serve(Standin(a.record, a.cat, a.final), config))


if __name__ == "__main__":
    sys.exit(main())
