"""Write Eddy plugins in Python.

An Eddy plugin is a WebAssembly component. This module hides the component
bindings that componentize-py generates: write a class with ``init`` and
``apply`` (an aggregator) or ``handle`` (a handler), wrap it with
:func:`aggregator` or :func:`handler`, and build with ``eddy plugin build``::

    import eddy_sdk

    class Counter:
        def init(self, key):
            return {"count": 0}

        def apply(self, state, event, out):
            state["count"] += 1
            return state

    Aggregator = eddy_sdk.aggregator(Counter)

Values and state are plain JSON-decoded Python objects. Raise
:class:`Invalid`, :class:`Retryable` or :class:`Fatal` to fail an event.
The same classes run natively for tests: see :func:`fold` and :func:`route`.
"""

import json


class Failure(Exception):
    """Base class of the failures a plugin may raise."""

    kind = "fatal"


class Invalid(Failure):
    """The input is wrong and will never succeed: it is dead-lettered."""

    kind = "invalid"


class Retryable(Failure):
    """A transient problem: the host retries with backoff."""

    kind = "retryable"


class Fatal(Failure):
    """The plugin cannot go on: the input is dead-lettered, the instance recycled."""

    kind = "fatal"


class Event:
    """One input event with its value decoded from JSON."""

    __slots__ = ("topic", "partition", "offset", "timestamp_ms", "key", "headers", "schema_id", "value")

    def __init__(self, topic, partition, offset, timestamp_ms, key, headers, schema_id, value):
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp_ms = timestamp_ms
        self.key = key
        self.headers = headers
        self.schema_id = schema_id
        self.value = value

    def header(self, name):
        """The first header named ``name`` (bytes), or None."""
        for n, v in self.headers:
            if n == name:
                return v
        return None


class Output:
    """Records produced while processing events."""

    def __init__(self):
        self.emits = []

    def emit(self, topic, key, value, headers=None):
        """Produce ``value`` (serialised to JSON) to ``topic`` with an optional key."""
        self.emits.append((topic, key, json.dumps(value, separators=(",", ":")), list(headers or [])))


def log(level, message):
    """Write a log line to the host's log (``level``: trace/debug/info/warn/error)."""
    try:
        from wit_world.imports import host
    except ImportError:  # running natively
        print(f"[{level}] {message}")
        return
    host.log(getattr(host.Level, level.upper()), message)


def _decode(topic, partition, offset, value):
    try:
        return json.loads(value)
    except ValueError as e:
        raise Invalid(f"event {topic}/{partition}@{offset} does not decode: {e}")


def _fold(impl, key, state_json, raw_events):
    """The JSON boundary: raw events are (topic, partition, offset, ts, key, headers, schema_id, value_json)."""
    if state_json is None:
        state = impl.init(key)
    else:
        try:
            state = json.loads(state_json)
        except ValueError as e:
            raise Invalid(f"stored state of key {key!r} does not decode: {e}")
    out = Output()
    for (topic, partition, offset, ts, rkey, headers, schema_id, value) in raw_events:
        event = Event(topic, partition, offset, ts, rkey, headers, schema_id, _decode(topic, partition, offset, value))
        result = impl.apply(state, event, out)
        if result is not None:
            state = result
    return json.dumps(state, separators=(",", ":")), out.emits


def _route(impl, raw_event):
    (topic, partition, offset, ts, rkey, headers, schema_id, value) = raw_event
    event = Event(topic, partition, offset, ts, rkey, headers, schema_id, _decode(topic, partition, offset, value))
    out = Output()
    impl.handle(event, out)
    return out.emits


def _raw(e):
    return (e.topic, e.partition, e.offset, e.timestamp_ms, e.key,
            [(h.name, bytes(h.value)) for h in e.headers], e.schema_id, e.value)


def _failure(types, f):
    cls = {"invalid": types.Failure_Invalid, "retryable": types.Failure_Retryable}.get(f.kind, types.Failure_Fatal)
    return cls(str(f))


def _emits(types, emits):
    return [types.Emit(topic, key, value, [types.Header(n, bytes(v)) for n, v in headers])
            for (topic, key, value, headers) in emits]


def aggregator(cls):
    """Wraps a class with ``init(key)`` and ``apply(state, event, out)`` as the
    component's ``aggregator`` export. ``apply`` may mutate ``state`` in place
    or return the new state."""
    impl = cls()

    class Aggregator:
        def apply(self, key, state, events):
            from componentize_py_types import Err
            from wit_world.exports import aggregator as agg
            from wit_world.imports import types

            try:
                new_state, emits = _fold(impl, key, state, [_raw(e) for e in events])
            except Failure as f:
                raise Err(_failure(types, f))
            return agg.Outcome(new_state, _emits(types, emits))

    Aggregator.impl = impl
    return Aggregator


def handler(cls):
    """Wraps a class with ``handle(event, out)`` as the component's ``handler`` export."""
    impl = cls()

    class Handler:
        def handle(self, events):
            from componentize_py_types import Ok, Err
            from wit_world.imports import types

            results = []
            for e in events:
                try:
                    results.append(Ok(_emits(types, _route(impl, _raw(e)))))
                except Failure as f:
                    results.append(Err(_failure(types, f)))
            return results

    Handler.impl = impl
    return Handler


def fold(component_class, key, values, state=None, topic="test"):
    """Native test helper: folds JSON-compatible ``values`` for ``key`` through
    an :func:`aggregator` class; returns ``(state, emits)`` as the host would see them."""
    raw = [(topic, 0, i, 0, key, [], None, json.dumps(v)) for i, v in enumerate(values)]
    state_json = None if state is None else json.dumps(state)
    new_state, emits = _fold(component_class.impl, key, state_json, raw)
    return json.loads(new_state), [(t, k, json.loads(v)) for (t, k, v, _) in emits]


def route(component_class, value, key=None, topic="test"):
    """Native test helper: runs one JSON-compatible ``value`` through a
    :func:`handler` class; returns the emitted ``(topic, key, value)`` list."""
    emits = _route(component_class.impl, (topic, 0, 0, 0, key, [], None, json.dumps(value)))
    return [(t, k, json.loads(v)) for (t, k, v, _) in emits]
