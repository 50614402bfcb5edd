"""Native tests of the Python SDK and the Python AsyncProcess plugins:
run with `python3 -m unittest discover -s sdk/python`."""

import importlib.util
import os
import pathlib
import sys
import unittest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import eddy_sdk  # noqa: E402


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PLUGINS = HERE.parent.parent / "plugins" / "python"
agg = load(PLUGINS / "async-process-aggregator" / "app.py", "agg_app")
router = load(PLUGINS / "rejected-process-router" / "app.py", "router_app")


def execution(eid, process, time, state):
    return {"id": eid, "asyncProcessId": process, "time": time, "state": state, "description": f"{state} step"}


class AsyncProcessAggregatorTest(unittest.TestCase):
    def test_orders_by_time_and_takes_the_latest_state(self):
        state, emits = eddy_sdk.fold(agg.Aggregator, "p", [
            execution("b", "p", 20, "STARTED"), execution("a", "p", 10, "ACCEPTED"), execution("c", "p", 30, "DONE"),
        ])
        self.assertEqual([e["id"] for e in state["executions"]], ["a", "b", "c"])
        self.assertEqual((state["state"], state["lastUpdate"], state["description"]), ("DONE", 30, "DONE step"))
        self.assertEqual(emits, [])

    def test_folds_on_top_of_a_stored_state(self):
        first, _ = eddy_sdk.fold(agg.Aggregator, "p", [execution("a", "p", 10, "ACCEPTED")])
        second, _ = eddy_sdk.fold(agg.Aggregator, "p", [execution("b", "p", 5, "WAITING")], state=first)
        self.assertEqual(second["state"], "ACCEPTED")
        self.assertEqual(len(second["executions"]), 2)

    def test_bad_executions_are_invalid(self):
        with self.assertRaises(eddy_sdk.Invalid):
            eddy_sdk.fold(agg.Aggregator, "p", [execution("a", "p", 1, "EXPLODED")])
        with self.assertRaises(eddy_sdk.Invalid):
            eddy_sdk.fold(agg.Aggregator, "p", [execution("a", "q", 1, "DONE")])


class RejectedRouterTest(unittest.TestCase):
    def test_routes_only_rejected(self):
        out = eddy_sdk.route(router.Handler, {"id": "p", "state": "REJECTED"})
        self.assertEqual(out, [("rejected-process", "p", {"id": "p", "state": "REJECTED"})])
        self.assertEqual(eddy_sdk.route(router.Handler, {"id": "p", "state": "DONE"}), [])
        with self.assertRaises(eddy_sdk.Invalid):
            eddy_sdk.route(router.Handler, [1, 2])


class FoldKeysTest(unittest.TestCase):
    """The 0.2.0 boundary: many keys per call, resident states by version."""

    def test_each_key_gets_its_own_result_and_a_failure_stays_its_own(self):
        results = eddy_sdk.fold_keys(agg.Aggregator, [
            ("p", None, 0, 1, [execution("a", "p", 10, "ACCEPTED")]),
            ("q", None, 0, 2, [execution("x", "q", 1, "EXPLODED")]),
            ("r", None, 0, 3, [execution("b", "r", 5, "DONE")]),
        ])
        self.assertEqual(results[0][0]["state"], "ACCEPTED")
        self.assertIsInstance(results[1], eddy_sdk.Invalid)
        self.assertEqual(results[2][0]["state"], "DONE")

    def test_a_resident_state_is_used_only_at_its_version(self):
        (first, _), = eddy_sdk.fold_keys(agg.Aggregator, [("k", None, 0, 11, [execution("a", "k", 1, "ACCEPTED")])])
        # At version 11 the resident state is used, whatever bytes come with it.
        stale = {"id": "k", "lastUpdate": None, "description": None, "state": None, "executions": []}
        (second, _), = eddy_sdk.fold_keys(agg.Aggregator, [("k", stale, 11, 12, [execution("b", "k", 2, "DONE")])])
        self.assertEqual([e["id"] for e in second["executions"]], ["a", "b"])
        # Another version: the state sent is the truth.
        (third, _), = eddy_sdk.fold_keys(agg.Aggregator, [("k", stale, 11, 13, [execution("c", "k", 3, "DONE")])])
        self.assertEqual([e["id"] for e in third["executions"]], ["c"])

    def test_a_failed_key_is_forgotten(self):
        (first, _), = eddy_sdk.fold_keys(agg.Aggregator, [("f", None, 0, 21, [execution("a", "f", 1, "ACCEPTED")])])
        failed, = eddy_sdk.fold_keys(agg.Aggregator, [
            ("f", first, 21, 22, [execution("b", "f", 2, "DONE"), execution("c", "f", 3, "EXPLODED")]),
        ])
        self.assertIsInstance(failed, eddy_sdk.Invalid)
        # Version 21 again: not resident any more, so the state sent is used
        # (without the half-applied "b").
        (again, _), = eddy_sdk.fold_keys(agg.Aggregator, [("f", first, 21, 23, [execution("d", "f", 4, "DONE")])])
        self.assertEqual([e["id"] for e in again["executions"]], ["a", "d"])


if __name__ == "__main__":
    unittest.main()


class Exploding:
    def init(self, key):
        return {}

    def apply(self, state, event, out):
        return {"total": state["missing"] + 1}


class UnhandledExceptionTest(unittest.TestCase):
    def test_an_unhandled_exception_is_fatal_with_its_traceback(self):
        results = eddy_sdk.fold_keys(eddy_sdk.aggregator(Exploding), [("k", None, 0, 1, [{"n": 1}])])
        failure = results[0]
        self.assertIsInstance(failure, eddy_sdk.Fatal)
        text = str(failure)
        self.assertIn('test_eddy_sdk.py", line', text)
        self.assertIn("in apply", text)
        self.assertIn("KeyError: 'missing'", text)


class Reminder:
    """Sets a wall-clock timer per event; counts the timers that fire."""

    def init(self, key):
        return {"fired": 0}

    def apply(self, state, event, out):
        out.set_timer("remind", event.value["at"], payload={"note": event.value["note"]})
        return state

    def on_timer(self, state, timer, out):
        state["fired"] += 1
        out.emit("reminders", None, {"name": timer.name, "at": timer.at_ms, "note": timer.payload["note"]})
        return state


class TimerTest(unittest.TestCase):
    def test_set_timer_is_a_request_and_on_timer_gets_the_fired_timer(self):
        component = eddy_sdk.aggregator(Reminder)
        state, emits = eddy_sdk.fold(component, "k", [{"at": 5, "note": "hi"}])
        self.assertEqual(emits, [("__eddy.timers", None,
                                  {"op": "set", "name": "remind", "at_ms": 5, "time": "wall",
                                   "payload": {"note": "hi"}})])
        state, emits = eddy_sdk.fire(component, "k", state, "remind", at_ms=5, payload={"note": "hi"})
        self.assertEqual(state, {"fired": 1})
        self.assertEqual(emits, [("reminders", None, {"name": "remind", "at": 5, "note": "hi"})])

    def test_a_bad_clock_is_fatal(self):
        with self.assertRaises(eddy_sdk.Fatal):
            eddy_sdk.Output().set_timer("t", 1, time="cpu")


class AsyncProcessTimeoutTest(unittest.TestCase):
    def setUp(self):
        os.environ["ASYNC_PROCESS_TIMEOUT_MS"] = "1000"
        os.environ["ASYNC_PROCESS_TIMEOUT_TOPIC"] = "timed-out"
        agg._settings = None

    def tearDown(self):
        del os.environ["ASYNC_PROCESS_TIMEOUT_MS"]
        del os.environ["ASYNC_PROCESS_TIMEOUT_TOPIC"]
        agg._settings = None

    def test_a_started_process_sets_a_timeout_and_times_out_to_error(self):
        state, emits = eddy_sdk.fold(agg.Aggregator, "p", [execution("a", "p", 10_000, "STARTED")])
        self.assertEqual(emits, [("__eddy.timers", None, {"op": "set", "name": "timeout", "at_ms": 11_000,
                                                         "time": "wall", "payload": {"lastUpdate": 10_000}})])
        state, emits = eddy_sdk.fire(agg.Aggregator, "p", state, "timeout", at_ms=11_000)
        self.assertEqual((state["state"], state["lastUpdate"]), ("ERROR", 11_000))
        self.assertEqual(state["executions"][-1]["id"], "timeout@11000")
        self.assertEqual(state["executions"][-1]["description"], "no update for 1000 ms in STARTED")
        self.assertEqual([t for (t, _, _) in emits], ["__eddy.timers", "timed-out"])

    def test_a_finished_process_cancels_it(self):
        state, _ = eddy_sdk.fold(agg.Aggregator, "p", [execution("a", "p", 10, "STARTED")])
        _, emits = eddy_sdk.fold(agg.Aggregator, "p", [execution("b", "p", 20, "DONE")], state=state)
        self.assertEqual(emits, [("__eddy.timers", None, {"op": "cancel", "name": "timeout"})])


def ev(ts, mark=None):
    headers = [] if mark is None else [("eddy-watermark", str(mark).encode())]
    return eddy_sdk.Event("t", 0, 0, ts, None, headers, None, {})


class WindowsTest(unittest.TestCase):
    def test_tumbling_windows_count_close_and_fail_late_events(self):
        w = eddy_sdk.Windows.tumbling(10, grace_ms=5)
        windows, out = [], eddy_sdk.Output()
        for ts in (3, 12, 7, -1):
            w.add(windows, ev(ts), out, lambda n: n + 1)
        self.assertEqual([(x["start"], x["end"], x["value"]) for x in windows], [(-10, 0, 1), (0, 10, 2), (10, 20, 1)])
        self.assertEqual(len(out.emits), 3)
        closed = w.close(windows, eddy_sdk.Timer("window@0", 15, "event", None))
        self.assertEqual(closed["value"], 2)
        with self.assertRaises(eddy_sdk.Invalid) as late:
            w.add(windows, ev(9, mark=15), out, lambda n: n + 1)
        self.assertTrue(str(late.exception).startswith("late: "))
        w.add(windows, ev(14, mark=15), out, lambda n: n + 1)

    def test_hopping_windows_take_an_event_in_each_window_that_holds_it(self):
        w = eddy_sdk.Windows.hopping(10, 5)
        windows, out = [], eddy_sdk.Output()
        w.add(windows, ev(7), out, lambda n: n + 1)
        w.add(windows, ev(8, mark=12), out, lambda n: n + 1)
        self.assertEqual([(x["start"], x["value"]) for x in windows], [(0, 1), (5, 2)])

    def test_sessions_grow_and_merge(self):
        w = eddy_sdk.Windows.session(20)
        windows, out = [], eddy_sdk.Output()
        for ts in (0, 30, 5, 22):
            w.add(windows, ev(ts), out, lambda n: n + 1, merge=lambda a, b: a + b)
        self.assertEqual([(x["start"], x["end"], x["value"]) for x in windows], [(0, 50, 4)])
        self.assertIn(("__eddy.timers", None, '{"op":"cancel","name":"window@30"}'), [e[:3] for e in out.emits])
