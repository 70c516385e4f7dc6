"""Helpers shared by the fleet scenario agents (tests/tests/fleet.rs)."""
import os


def me():
    """This process's pid and start ticks (field 22 of /proc/self/stat): the two
    halves of the exec id the sensor reports, read independently of the sensor."""
    with open("/proc/self/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()
    return {"pid": os.getpid(), "start_ticks": int(fields[19])}
