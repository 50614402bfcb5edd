"""The AsyncProcess fold in Quix Streams: the peer Eddy is measured against.

Reads the executions topic from the beginning with a stateful dataframe
(RocksDB state, no changelog topic, the same as Eddy's local store) and folds
each execution into its process exactly as Eddy's AsyncProcess aggregator
does: executions kept sorted by (time, id), the latest one's time and state,
the latest non-empty description. Stops after --events events and prints one
JSON line: events, seconds from the first event to the last, events/s.
"""

import argparse
import bisect
import json
import tempfile
import time

from quixstreams import Application


def fold(value, state):
    process = state.get("process") or {"id": value["asyncProcessId"], "executions": []}
    executions = process["executions"]
    keys = [(e["time"], e["id"]) for e in executions]
    executions.insert(bisect.bisect_right(keys, (value["time"], value["id"])), value)
    latest = executions[-1]
    process["lastUpdate"] = latest["time"]
    process["state"] = latest["state"]
    for e in reversed(executions):
        if e.get("description"):
            process["description"] = e["description"]
            break
    state.set("process", process)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--group", default="bench-quix")
    args = parser.parse_args()

    seen = {"n": 0, "first": None, "last": None}

    def count(value):
        now = time.monotonic()
        if seen["first"] is None:
            seen["first"] = now
        seen["n"] += 1
        seen["last"] = now
        return value

    with tempfile.TemporaryDirectory() as state_dir:
        app = Application(
            broker_address=args.brokers,
            consumer_group=args.group,
            auto_offset_reset="earliest",
            state_dir=state_dir,
            use_changelog_topics=False,
            loglevel="WARNING",
        )
        topic = app.topic(args.topic, value_deserializer="json", key_deserializer="string")
        sdf = app.dataframe(topic)
        sdf = sdf.update(fold, stateful=True).update(count)
        app.run(count=args.events, timeout=600)
    seconds = (seen["last"] or 0) - (seen["first"] or 0)
    print(
        json.dumps(
            {
                "events": seen["n"],
                "seconds": seconds,
                "events_per_s": (seen["n"] - 1) / seconds if seconds > 0 else 0,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
