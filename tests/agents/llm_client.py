"""An undeclared agent: posts an OpenAI-shaped chat completion over TLS with nothing
but the standard library. custodyd must discover it from what it sends."""
import json
import os
import ssl
import sys
import urllib.request

port, ca = sys.argv[1], sys.argv[2]
body = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a finance assistant."},
        {"role": "user", "content": "Summarise the October ledger."},
    ],
    "tools": [{"type": "function", "function": {"name": "read_ledger", "parameters": {"type": "object"}}}],
}
req = urllib.request.Request(
    f"https://localhost:{port}/v1/chat/completions",
    data=json.dumps(body).encode(),
    headers={"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]},
)
with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=ca)) as r:
    print(json.loads(r.read())["choices"][0]["finish_reason"], flush=True)
