"""The demo's declared agent (written out by `cargo xtask demo`; edit it in
xtask/src/demo/). Started by a human with CUSTODY_AGENT=finance-supervisor for
"prepare the monthly close report", it:
  1. uses its tools: tests/agents/sensor_scenario.py (files, a local TCP service, DNS,
     HTTPS with its delegation token, node, an MCP tool server over stdio);
  2. delegates a ledger summary to a sub-agent, tests/agents/llm_client.py, which
     nobody declared: custodyd discovers it from the LLM API request it sends.
"""
import os
import subprocess
import sys
import time

agents, work, tls_port, dns_ip, marker = sys.argv[1:6]

# custodyd learns of a declared agent from its exec event; give it a moment to track
# us in the kernel before we spawn anything (README, "Known limits").
time.sleep(0.5)
print(f"SUPERVISOR_PID {os.getpid()}", flush=True)

subprocess.run(
    [sys.executable, os.path.join(agents, "sensor_scenario.py"), work, tls_port, dns_ip,
     marker, os.environ["FINANCE_API_TOKEN"]],
    check=True)

# The sub-agent gets no agent marker: it is known only by what it does.
env = {k: v for k, v in os.environ.items() if k not in ("CUSTODY_AGENT", "FINANCE_API_TOKEN")}
subprocess.run(
    [sys.executable, os.path.join(agents, "llm_client.py"), tls_port,
     os.path.join(work, "ca.pem")],
    env=env, check=True)
print("SUPERVISOR_DONE", flush=True)
