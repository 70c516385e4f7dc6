"""The finance worker agent (host B): an HTTPS service that takes tasks delegated by
the supervisor, with the human's delegation token.

    finance_worker.py PORT REPORTER_URL

Per task: it checks the delegation token, starts its MCP tool server over stdio (the
`mcp` SDK's stdio client; the server gets the worker's database credential), offers
the tools to the model (the `openai` SDK), runs the tool calls the model asks for —
reading the ledger, asking the reporter agent on host C to draft the report (with a
delegation token naming the human and both agents), and reading whatever file the
model names — and answers with the model's summary.

Credentials come from its credential file (STORY_ENV_FILE): OPENAI_API_KEY,
DATABASE_URL, FINANCE_DELEGATION_KEY.
"""
import json
import os
import sys

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

sys.path.insert(0, os.path.dirname(__file__))
from common import (MONTH, JsonHandler, delegation_token, https_client, llm,  # noqa: E402
                    load_env_file, say, serve_https, verify_delegation)

HERE = os.path.dirname(os.path.abspath(__file__))
REPORTER = sys.argv[2] if len(sys.argv) > 2 else ""

DRAFT_TOOL = {"type": "function", "function": {
    "name": "draft_report",
    "description": "Ask the reporting agent to draft the close report from totals.",
    "parameters": {"type": "object", "properties": {
        "month": {"type": "string"}, "totals": {"type": "string"}},
        "required": ["month", "totals"]}}}


def openai_tool(t):
    return {"type": "function", "function": {
        "name": t.name, "description": t.description or "",
        "parameters": t.input_schema}}


async def run_task(task, claims, secrets):
    params = StdioServerParameters(
        command=sys.executable,
        args=[os.path.join(HERE, "finance_tools.py")],
        env={"DATABASE_URL": secrets["DATABASE_URL"], "STORY_DATA": os.environ["STORY_DATA"]},
    )
    model = llm(secrets["OPENAI_API_KEY"])
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as mcp:
            await mcp.initialize()
            tools = [openai_tool(t) for t in (await mcp.list_tools()).tools] + [DRAFT_TOOL]
            msgs = [
                {"role": "system", "content": "You are the finance worker. Use the finance "
                 "tools to gather figures for the task you were delegated."},
                {"role": "user", "content": task},
            ]
            for _ in range(8):
                out = model.chat.completions.create(model="gpt-4o-mini", messages=msgs,
                                                    tools=tools)
                m = out.choices[0].message
                if not m.tool_calls:
                    return m.content
                msgs.append(m.model_dump(exclude_none=True))
                for c in m.tool_calls:
                    args = json.loads(c.function.arguments)
                    say("worker", "tool_call", tool=c.function.name, arguments=args)
                    if c.function.name == "draft_report":
                        text = draft(args, claims, secrets)
                    else:
                        res = await mcp.call_tool(c.function.name, args)
                        text = "\n".join(getattr(x, "text", "") for x in res.content)
                    msgs.append({"role": "tool", "tool_call_id": c.id, "content": text})
    return "no answer"


def draft(args, claims, secrets):
    token = delegation_token(secrets["FINANCE_DELEGATION_KEY"], claims["sub"],
                             "finance-worker", upstream=claims, aud="finance-reporter")
    with https_client() as h:
        r = h.post(REPORTER + "/drafts", json=args,
                   headers={"Authorization": f"Bearer {token}"})
    r.raise_for_status()
    return r.json()["draft"]


class Handler(JsonHandler):
    def do_POST(self):
        body = json.loads(self.body())
        secrets = load_env_file()
        try:
            claims = verify_delegation(self.headers.get("Authorization"),
                                       secrets["FINANCE_DELEGATION_KEY"], "finance-worker")
        except Exception as e:  # noqa: BLE001 - any token problem is a 401
            return self.reply(401, {"error": f"delegation refused: {e}"})
        say("worker", "task", human=claims["sub"], task=body.get("task", ""))
        try:
            answer = anyio.run(run_task, body.get("task", ""), claims, secrets)
        except Exception as e:  # noqa: BLE001 - report, keep serving
            say("worker", "task_failed", error=str(e))
            return self.reply(500, {"error": str(e)})
        self.reply(200, {"month": body.get("month", MONTH), "summary": answer})



def main():
    serve_https("worker", "0.0.0.0", int(sys.argv[1]), Handler)


if __name__ == "__main__":
    main()
