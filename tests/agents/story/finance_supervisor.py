"""The finance supervisor agent (host A), started by a human for a task:

    finance_supervisor.py WORKER_URL "prepare the monthly close report"

It asks the model (the `openai` SDK) how to proceed; the model delegates to the
worker agent on host B, which the supervisor calls over HTTPS with a delegation token
naming the human (`sub`) and itself (`act`). It prints the model's final answer, then
stays in the session for STORY_LINGER seconds (a person reviews the result), so a
response that kills the chain finds it alive.

Credentials from its environment, as the human's session provides them:
OPENAI_API_KEY, FINANCE_DELEGATION_KEY.
"""
import json
import os
import pwd
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import delegation_token, https_client, llm, say  # noqa: E402

DELEGATE = {"type": "function", "function": {
    "name": "delegate_to_worker",
    "description": "Hand a finance task to the worker agent.",
    "parameters": {"type": "object", "properties": {
        "task": {"type": "string"}, "month": {"type": "string"}},
        "required": ["task"]}}}


def human():
    uid = int(open("/proc/self/loginuid").read())
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def main():
    worker_url, task = sys.argv[1], sys.argv[2]
    who = human()
    say("supervisor", "start", human=who, task=task)
    model = llm(os.environ["OPENAI_API_KEY"])
    msgs = [
        {"role": "system", "content": "You are the finance supervisor. Plan the work and "
         "delegate data gathering to the worker agent."},
        {"role": "user", "content": task},
    ]
    answer = None
    for _ in range(4):
        out = model.chat.completions.create(model="gpt-4o", messages=msgs, tools=[DELEGATE])
        m = out.choices[0].message
        if not m.tool_calls:
            answer = m.content
            break
        msgs.append(m.model_dump(exclude_none=True))
        for c in m.tool_calls:
            args = json.loads(c.function.arguments)
            say("supervisor", "delegate", task=args.get("task", ""))
            token = delegation_token(os.environ["FINANCE_DELEGATION_KEY"], who,
                                     "finance-supervisor", aud="finance-worker")
            try:
                with https_client() as h:
                    r = h.post(worker_url + "/tasks", json=args,
                               headers={"Authorization": f"Bearer {token}"}, timeout=120)
                result = r.text
            except Exception as e:  # noqa: BLE001 - the model hears about failures
                result = json.dumps({"error": str(e)})
            msgs.append({"role": "tool", "tool_call_id": c.id, "content": result})
    say("supervisor", "done", answer=answer or "")
    deadline = time.time() + float(os.environ.get("STORY_LINGER", "0"))
    while time.time() < deadline:
        time.sleep(0.5)


if __name__ == "__main__":
    main()
