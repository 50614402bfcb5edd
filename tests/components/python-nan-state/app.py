"""Sums events' `n`; an event with `"nan": true` puts NaN in the state,
which json.dumps writes as `NaN` (not JSON)."""

import eddy_sdk


class Sum:
    def init(self, key):
        return {"sum": 0}

    def apply(self, state, event, out):
        if event.value.get("nan"):
            state["sum"] = float("nan")
        else:
            state["sum"] += event.value["n"]
        return state


Aggregator = eddy_sdk.aggregator(Sum)
