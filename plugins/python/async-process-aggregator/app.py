"""The AsyncProcess aggregator of seed 000, in Python.

Executions are kept ordered by time (ties by execution id, then arrival); the
process state and last update come from the latest execution, the
description from the latest execution that has one.

With ``ASYNC_PROCESS_TIMEOUT_MS`` granted (``[plugin.grants] env``), a
process left in STARTED or RETRY that long after its latest execution is
marked ERROR by a timer (``ASYNC_PROCESS_TIMEOUT_TOPIC`` also emits it
there), as the Rust aggregator does.
"""

import bisect

import eddy_sdk

STATES = {"WAITING", "ACCEPTED", "STARTED", "DONE", "ERROR", "REJECTED", "RETRY"}
FIELDS = ("id", "asyncProcessId", "log", "description", "params", "time", "state")
WAITING = ("STARTED", "RETRY")

_settings = None


def settings():
    """Read from the granted environment on first use (not at build time)."""
    global _settings
    if _settings is None:
        timeout = eddy_sdk.env("ASYNC_PROCESS_TIMEOUT_MS")
        _settings = {
            "timeout": int(timeout) if timeout and timeout.strip().isdigit() else None,
            "topic": eddy_sdk.env("ASYNC_PROCESS_TIMEOUT_TOPIC") or None,
        }
    return _settings


def add(process, execution):
    at = bisect.bisect_right(process["executions"], (execution["time"], execution["id"]),
                             key=lambda x: (x["time"], x["id"]))
    process["executions"].insert(at, execution)
    latest = process["executions"][-1]
    process["lastUpdate"] = latest["time"]
    process["state"] = latest["state"]
    for x in reversed(process["executions"]):
        if x.get("description"):
            process["description"] = x["description"]
            break


class AsyncProcess:
    def init(self, key):
        return {"id": key, "lastUpdate": None, "description": None, "state": None, "executions": []}

    def apply(self, process, event, out):
        e = event.value
        if not isinstance(e, dict):
            raise eddy_sdk.Invalid("an execution must be a JSON object")
        for field in ("id", "asyncProcessId", "time", "state"):
            if field not in e or e[field] is None:
                raise eddy_sdk.Invalid(f"missing field `{field}`")
        if e["state"] not in STATES:
            raise eddy_sdk.Invalid(f"unknown variant `{e['state']}`")
        if not isinstance(e["time"], int) or isinstance(e["time"], bool):
            raise eddy_sdk.Invalid("`time` must be an integer")
        if e["asyncProcessId"] != process["id"]:
            raise eddy_sdk.Invalid(
                f"execution {e['id']} belongs to process {e['asyncProcessId']!r}, not to {process['id']!r}")
        before = process["state"]
        add(process, {f: e.get(f) for f in FIELDS})
        timeout = settings()["timeout"]
        if timeout is not None:
            if process["state"] in WAITING and process["lastUpdate"] is not None:
                out.set_timer("timeout", process["lastUpdate"] + timeout, payload={"lastUpdate": process["lastUpdate"]})
            elif before in WAITING:
                out.cancel_timer("timeout")
        return process

    def on_timer(self, process, timer, out):
        timeout = settings()["timeout"]
        if timer.name != "timeout" or process["state"] not in WAITING or timeout is None:
            return process
        was = process["state"]
        add(process, {"id": f"timeout@{timer.at_ms}", "asyncProcessId": process["id"], "log": None,
                      "description": f"no update for {timeout} ms in {was}", "params": None,
                      "time": timer.at_ms, "state": "ERROR"})
        out.cancel_timer("retry")
        topic = settings()["topic"]
        if topic:
            out.emit(topic, process["id"], process)
        return process


Aggregator = eddy_sdk.aggregator(AsyncProcess)
