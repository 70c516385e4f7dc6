"""A steady stream of tracked activity for the collector-restart test: file writes
and short-lived children until the stop file appears (or a minute passes)."""
import os
import subprocess
import sys
import time

work, stop = sys.argv[1:3]
time.sleep(0.5)
print("started", flush=True)
i = 0
deadline = time.monotonic() + 60
while not os.path.exists(stop) and time.monotonic() < deadline:
    with open(os.path.join(work, f"activity-{i % 50}.txt"), "w") as f:
        f.write(str(i))
    if i % 10 == 0:
        subprocess.run(["/bin/true", f"tick-{i}"])
    i += 1
    time.sleep(0.02)
print(f"iterations {i}", flush=True)
