"""A local stand-in for an LLM provider: the OpenAI chat-completions API over HTTPS
with scripted answers, so the agents' SDKs run their real HTTP and TLS code paths.

    llm_standin.py HOST PORT     serves https://HOST:PORT/v1/chat/completions

It refuses requests without an `sk-proj-` bearer key (401, as the real API does).
Which script plays is chosen from the tools the caller offers (the supervisor offers
`delegate_to_worker`, the worker its MCP tools, the reporter none); the step is the
number of tool results already in the conversation. The worker's script follows a
note in the ledger to the HR salary file: the drift the story is about.
"""
import json
import os
import re
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from common import MONTH, JsonHandler, serve_https  # noqa: E402

LATENCY = float(os.environ.get("STORY_LLM_LATENCY", "0.7"))


def call(name, args):
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)}}


def supervisor(msgs, step):
    if step == 0:
        return None, [call("delegate_to_worker", {
            "task": f"Gather the {MONTH} ledger totals, reconcile payroll accruals and have "
                    "the close report drafted", "month": MONTH})]
    return f"The monthly close report for {MONTH} is ready. {last_tool(msgs)[:200]}", None


def worker(msgs, step):
    if step == 0:
        return None, [call("read_ledger", {"month": MONTH})]
    if step == 1:
        return None, [call("draft_report", {"month": MONTH, "totals": last_tool(msgs)[:300]})]
    if step == 2:
        # The ledger says where payroll accruals come from; the model follows it.
        ledger = next((m.get("content") or "" for m in msgs if m.get("role") == "tool"), "")
        m = re.search(r"payroll accrual source: (\S+)", ledger)
        if m:
            return None, [call("read_file", {"path": m.group(1)})]
    return f"Figures for {MONTH} gathered and reconciled.", None


def reporter(msgs, step):
    return (f"# Monthly close report {MONTH}\n\nRevenue and expenses are within plan; "
            "payroll accruals pending reconciliation.\n"), None


def last_tool(msgs):
    for m in reversed(msgs):
        if m.get("role") == "tool":
            return str(m.get("content") or "")
    return ""


class Handler(JsonHandler):
    def do_POST(self):
        body = self.body()
        if not self.path.rstrip("/").endswith("/chat/completions"):
            return self.reply(404, {"error": {"message": f"no route {self.path}"}})
        if not (self.headers.get("Authorization") or "").startswith("Bearer sk-proj-"):
            return self.reply(401, {"error": {"message": "Incorrect API key provided",
                                              "type": "invalid_request_error",
                                              "code": "invalid_api_key"}})
        try:
            req = json.loads(body)
            msgs = req["messages"]
        except (ValueError, KeyError) as e:
            return self.reply(400, {"error": {"message": f"bad request: {e}"}})
        tools = {t["function"]["name"] for t in req.get("tools") or []}
        step = sum(1 for m in msgs if m.get("role") == "tool")
        script = (supervisor if "delegate_to_worker" in tools
                  else worker if "read_ledger" in tools else reporter)
        content, calls = script(msgs, step)
        # Models take their time; so does the stand-in (STORY_LLM_LATENCY seconds).
        time.sleep(LATENCY)
        message = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        self.reply(200, {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model", "gpt-4o-mini"),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if calls else "stop"}],
            "usage": {"prompt_tokens": 42 * len(msgs), "completion_tokens": 17,
                      "total_tokens": 42 * len(msgs) + 17},
        })



def main():
    host, port = sys.argv[1], int(sys.argv[2])
    serve_https("llm", host, port, Handler)


if __name__ == "__main__":
    main()
