"""The AsyncProcess aggregator of seed 000, in Python.

Executions are kept ordered by time (ties by execution id, then arrival); the
process state and last update come from the latest execution, the
description from the latest execution that has one.
"""

import bisect

import eddy_sdk

STATES = {"WAITING", "ACCEPTED", "STARTED", "DONE", "ERROR", "REJECTED", "RETRY"}
FIELDS = ("id", "asyncProcessId", "log", "description", "params", "time", "state")


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
        execution = {f: e.get(f) for f in FIELDS}
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
        return process


Aggregator = eddy_sdk.aggregator(AsyncProcess)
