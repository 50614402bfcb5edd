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

Timers: ``out.set_timer(name, at_ms, time="wall", payload=None)`` sets a
timer on the key being folded (``time="event"``: on the partition's
watermark), ``out.cancel_timer(name)`` cancels it; when it fires, the
aggregator's ``on_timer(state, timer, out)`` is called with a
:class:`Timer` (and may return the new state, as ``apply`` does).

The component speaks the contract ``eddy:plugin@0.2.0`` (one call folds
many keys; states stay decoded between calls while the host names them by
the version this instance gave them) or, built with ``--contract 0.1.0``,
the older one. States cross as JSON in both.
"""

import json
import os


def env(name):
    """The value of the environment variable ``name`` the host grants the plugin
    (``[plugin.grants] env`` in its config), or None: a plugin's settings."""
    return os.environ.get(name)


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


# An emit to this topic sets or cancels a timer instead of producing a record.
TIMER_REQUEST_TOPIC = "__eddy.timers"
# A fired timer arrives as an event of a topic starting with this.
TIMER_TOPIC_PREFIX = "__eddy.timers."


class Timer:
    """A timer that fired: its ``name``, the instant ``at_ms`` it was set for,
    its clock ``time`` (``"wall"`` or ``"event"``) and its ``payload``."""

    __slots__ = ("name", "at_ms", "time", "payload")

    def __init__(self, name, at_ms, time, payload):
        self.name = name
        self.at_ms = at_ms
        self.time = time
        self.payload = payload


class Output:
    """Records produced while processing events."""

    def __init__(self):
        self.emits = []

    def emit(self, topic, key, value, headers=None):
        """Produce ``value`` (serialised to JSON) to ``topic`` with an optional key."""
        self.emits.append((topic, key, json.dumps(value, separators=(",", ":")), list(headers or [])))

    def set_timer(self, name, at_ms, time="wall", payload=None):
        """Set (or replace) the timer ``name`` of the key being folded, due at
        ``at_ms`` (ms since the Unix epoch) on the ``time`` clock: ``"wall"``
        (the host's) or ``"event"`` (the partition's watermark)."""
        if time not in ("wall", "event"):
            raise Fatal(f"timer {name!r}: time {time!r} is neither 'wall' nor 'event'")
        self.emit(TIMER_REQUEST_TOPIC, None,
                  {"op": "set", "name": name, "at_ms": int(at_ms), "time": time, "payload": payload})

    def cancel_timer(self, name):
        """Cancel the key's timer ``name`` (nothing when it has none)."""
        self.emit(TIMER_REQUEST_TOPIC, None, {"op": "cancel", "name": name})


# Where the plugin is, named in its log lines: (key, offset) of the event
# being processed.
_at = [None, None]


def log(level, message):
    """Write a log line to the host's log (``level``: trace/debug/info/warn/error),
    tagged with the key and offset of the event being processed."""
    try:
        from wit_world.imports import host
    except ImportError:  # running natively
        print(f"[{level}] {message}")
        return
    try:
        host.log(getattr(host.Level, level.upper()), message, _at[0], _at[1])
    except TypeError:  # the 0.1.0 contract's log takes no key and offset
        host.log(getattr(host.Level, level.upper()), message)


def _decode(topic, partition, offset, value):
    try:
        return json.loads(value)
    except ValueError as e:
        raise Invalid(f"event {topic}/{partition}@{offset} does not decode: {e}")


def _load(key, state_json):
    if state_json is None:
        return None
    try:
        return json.loads(state_json)
    except ValueError as e:
        raise Invalid(f"stored state of key {key!r} does not decode: {e}")


def _apply_all(impl, key, state, raw_events):
    """Applies raw events (topic, partition, offset, ts, key, headers, schema_id, value_json) to a decoded state."""
    if state is None:
        state = impl.init(key)
    out = Output()
    _at[0] = key
    try:
        for (topic, partition, offset, ts, rkey, headers, schema_id, value) in raw_events:
            _at[1] = offset
            decoded = _decode(topic, partition, offset, value)
            if topic.startswith(TIMER_TOPIC_PREFIX):
                on_timer = getattr(impl, "on_timer", None)
                if on_timer is None:
                    continue
                timer = Timer(decoded.get("name"), decoded.get("at_ms"), decoded.get("time"), decoded.get("payload"))
                result = on_timer(state, timer, out)
            else:
                event = Event(topic, partition, offset, ts, rkey, headers, schema_id, decoded)
                result = impl.apply(state, event, out)
            if result is not None:
                state = result
    except Failure:
        raise
    except Exception as e:
        raise Fatal(_traceback(e)) from e
    finally:
        _at[0] = _at[1] = None
    return state, out.emits


def _traceback(e):
    """An exception the plugin did not handle, as Python prints it: the
    plugin's own frames (file, line, code) and the error — its dead letter
    says where it failed."""
    lines = ["Traceback (most recent call last):"]
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        name = code.co_filename
        if os.path.basename(name) != "eddy_sdk.py":
            # The component holds the plugin's directory as /0/.
            if name.startswith("/0/"):
                name = name[3:]
            lines.append(f'  File "{name}", line {tb.tb_lineno}, in {code.co_name}')
        tb = tb.tb_next
    message = str(e)
    lines.append(f"{type(e).__name__}: {message}" if message else type(e).__name__)
    return "\n".join(lines)


def _fold(impl, key, state_json, raw_events):
    """The JSON boundary of one key (the 0.1.0 contract, and the test helpers)."""
    state, emits = _apply_all(impl, key, _load(key, state_json), raw_events)
    return json.dumps(state, separators=(",", ":")), emits


class _Resident:
    """Decoded states kept between calls (0.2.0), each under the version the
    host gave it, within a budget of bytes (a state counts as ten times its
    JSON size: Python objects are large). Once full, a state not kept yet
    gets in one time in ``ADMIT_EVERY``, in place of older ones: the states
    kept stay kept, rather than each being dropped before its key returns
    when the keys outnumber the budget."""

    ADMIT_EVERY = 64

    def __init__(self):
        self.states = {}
        self.bytes = 0
        self.budget = 0
        self.refused = 0

    def take(self, key, version):
        kept = self.states.get(key)
        if version == 0 or kept is None or kept[0] != version:
            return None
        del self.states[key]
        self.bytes -= kept[2]
        return kept[1]

    def forget(self, key):
        kept = self.states.pop(key, None)
        if kept is not None:
            self.bytes -= kept[2]

    def keep(self, key, version, state, encoded):
        size = encoded * 10 + len(key) + 100
        if self.budget == 0 or size > self.budget // 4:
            return
        self.forget(key)
        if self.bytes + size > self.budget:
            self.refused += 1
            if self.refused < self.ADMIT_EVERY:
                return
            self.refused = 0
            for k in list(self.states):
                if self.bytes + size <= self.budget:
                    break
                self.forget(k)
        self.states[key] = (version, state, size)
        self.bytes += size


def _fold_keys(impl, resident, batch):
    """The 0.2.0 boundary: batch items are (key, state_bytes, version, next_version, raw_events);
    returns one (state_bytes, emits) or Failure per key."""
    results = []
    for (key, state_bytes, version, next_version, raw_events) in batch:
        try:
            state = resident.take(key, version)
            if state is None:
                state = _load(key, state_bytes)
            state, emits = _apply_all(impl, key, state, raw_events)
            encoded = json.dumps(state, separators=(",", ":")).encode()
        except Failure as f:
            resident.forget(key)
            results.append(f)
            continue
        resident.keep(key, next_version, state, len(encoded))
        results.append((encoded, emits))
    return results


def _route(impl, raw_event):
    try:
        return _route_one(impl, raw_event)
    except Failure:
        raise
    except Exception as e:
        raise Fatal(_traceback(e)) from e


def _route_one(impl, raw_event):
    (topic, partition, offset, ts, rkey, headers, schema_id, value) = raw_event
    decoded = _decode(topic, partition, offset, value)
    out = Output()
    if topic.startswith(TIMER_TOPIC_PREFIX):
        # A schedule's run, in a pipeline without an aggregator.
        on_timer = getattr(impl, "on_timer", None)
        if on_timer is not None:
            on_timer(Timer(decoded.get("name"), decoded.get("at_ms"), decoded.get("time"), decoded.get("payload")), out)
        return out.emits
    event = Event(topic, partition, offset, ts, rkey, headers, schema_id, decoded)
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
    resident = _Resident()

    class Aggregator:
        def setup(self, settings):
            from wit_world.exports import aggregator as agg

            resident.budget = settings.resident_bytes
            return agg.StateFormat.JSON

        def fold(self, batch):
            from componentize_py_types import Ok, Err
            from wit_world.exports import aggregator as agg
            from wit_world.imports import types

            raw = [(k.key, k.state, k.version, k.next_version, [_raw(e) for e in k.events]) for k in batch]
            out = []
            for r in _fold_keys(impl, resident, raw):
                if isinstance(r, Failure):
                    out.append(Err(_failure(types, r)))
                else:
                    out.append(Ok(agg.Outcome(r[0], _emits(types, r[1]))))
            return out

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
    Aggregator.resident = resident
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
                _at[0], _at[1] = e.key, e.offset
                try:
                    results.append(Ok(_emits(types, _route(impl, _raw(e)))))
                except Failure as f:
                    results.append(Err(_failure(types, f)))
                finally:
                    _at[0] = _at[1] = None
            return results

    Handler.impl = impl
    return Handler


def fold_keys(component_class, batch, topic="test"):
    """Native test helper for the 0.2.0 boundary: ``batch`` is a list of
    ``(key, state, version, next_version, values)``; returns one
    ``(state, emits)`` or :class:`Failure` per key, keeping resident states
    between calls as the component does."""
    impl = component_class.impl
    resident = component_class.resident
    resident.budget = max(resident.budget, 1 << 24)
    raw = []
    for (key, state, version, next_version, values) in batch:
        events = [(topic, 0, i, 0, key, [], None, json.dumps(v)) for i, v in enumerate(values)]
        state_bytes = None if state is None else json.dumps(state).encode()
        raw.append((key, state_bytes, version, next_version, events))
    out = []
    for r in _fold_keys(impl, resident, raw):
        if isinstance(r, Failure):
            out.append(r)
        else:
            out.append((json.loads(r[0]), [(t, k, json.loads(v)) for (t, k, v, _) in r[1]]))
    return out


def fold(component_class, key, values, state=None, topic="test"):
    """Native test helper: folds JSON-compatible ``values`` for ``key`` through
    an :func:`aggregator` class; returns ``(state, emits)`` as the host would see them."""
    raw = [(topic, 0, i, 0, key, [], None, json.dumps(v)) for i, v in enumerate(values)]
    state_json = None if state is None else json.dumps(state)
    new_state, emits = _fold(component_class.impl, key, state_json, raw)
    return json.loads(new_state), [(t, k, json.loads(v)) for (t, k, v, _) in emits]


WATERMARK_HEADER = "eddy-watermark"


def watermark(event):
    """The watermark the host sent with ``event`` (``eddy-watermark``, on every
    event once the pipeline has set an event-time timer), else None."""
    v = event.header(WATERMARK_HEADER)
    try:
        return int(bytes(v).decode()) if v is not None else None
    except ValueError:
        return None


class Windows:
    """Event-time windows over a key's events, on timers (as the Rust SDK's
    ``eddy_sdk::windows``): ``Windows.tumbling(size_ms)``,
    ``Windows.hopping(size_ms, advance_ms)`` or ``Windows.session(gap_ms)``,
    each with ``grace_ms``. A key's open windows live in its state, as a list
    of ``{"start", "end", "value"}``; :meth:`add` folds an event into its
    windows (by its timestamp) and sets each new window's event-time timer
    at its end plus the grace; :meth:`close`, in ``on_timer``, returns the
    window a timer closes. An event whose windows have all closed raises an
    :class:`Invalid` starting ``late: ``, dead-lettered with the class ``late``."""

    def __init__(self, kind, size_ms=0, advance_ms=0, gap_ms=0, grace_ms=0):
        self.kind, self.size, self.advance, self.gap, self.grace = kind, size_ms, advance_ms, gap_ms, grace_ms

    @classmethod
    def tumbling(cls, size_ms, grace_ms=0):
        return cls("tumbling", size_ms=max(1, size_ms), grace_ms=grace_ms)

    @classmethod
    def hopping(cls, size_ms, advance_ms, grace_ms=0):
        return cls("hopping", size_ms=max(1, size_ms), advance_ms=max(1, advance_ms), grace_ms=grace_ms)

    @classmethod
    def session(cls, gap_ms, grace_ms=0):
        return cls("session", gap_ms=max(1, gap_ms), grace_ms=grace_ms)

    def _spans(self, ts):
        if self.kind == "tumbling":
            start = ts // self.size * self.size
            return [(start, start + self.size)]
        start = ts // self.advance * self.advance
        spans = []
        while start > ts - self.size:
            spans.append((start, start + self.size))
            start -= self.advance
        return list(reversed(spans))

    def _late(self, end, mark):
        return mark is not None and end + self.grace <= mark

    def _timer(self, out, start, end):
        out.set_timer(f"window@{start}", end + self.grace, time="event", payload={"start": start, "end": end})

    def _late_failure(self, ts, mark):
        return Invalid(f"late: an event at {ts} came after its window closed (watermark {mark}, grace {self.grace} ms)")

    def add(self, windows, event, out, fold, init=lambda: 0, merge=None):
        """Folds ``event`` into its windows in ``windows`` (a list kept in the
        state): ``fold(value) -> value``, new windows start from ``init()``;
        sessions merge with ``merge(a, b) -> value``."""
        ts, mark = event.timestamp_ms, watermark(event)
        if self.kind == "session":
            return self._add_session(windows, ts, mark, out, fold, init, merge)
        added = False
        for start, end in self._spans(ts):
            if self._late(end, mark):
                continue
            w = next((w for w in windows if w["start"] == start), None)
            if w is None:
                w = {"start": start, "end": end, "value": init()}
                windows.append(w)
                windows.sort(key=lambda x: x["start"])
                self._timer(out, start, end)
            w["value"] = fold(w["value"])
            added = True
        if not added:
            raise self._late_failure(ts, mark)

    def _add_session(self, windows, ts, mark, out, fold, init, merge):
        start, end = ts, ts + self.gap
        touching = [w for w in windows if w["start"] - self.gap <= ts < w["end"]]
        if not touching and self._late(end, mark):
            raise self._late_failure(ts, mark)
        for w in touching:
            start, end = min(start, w["start"]), max(end, w["end"])
        value = init()
        for w in touching:
            windows.remove(w)
            if w["start"] != start:
                out.cancel_timer(f"window@{w['start']}")
            value = merge(value, w["value"]) if merge else w["value"]
        windows.append({"start": start, "end": end, "value": fold(value)})
        windows.sort(key=lambda x: x["start"])
        self._timer(out, start, end)

    def close(self, windows, timer):
        """The window ``timer`` closes, taken out of ``windows``; None for a
        timer that is not one of these windows'."""
        if not timer.name.startswith("window@"):
            return None
        try:
            start = int(timer.name[len("window@"):])
        except ValueError:
            return None
        for w in windows:
            if w["start"] == start:
                windows.remove(w)
                return w
        return None


def fire(component_class, key, state, name, at_ms=0, time="wall", payload=None):
    """Native test helper: fires the timer ``name`` of ``key`` on ``state``
    through the aggregator's ``on_timer``; returns ``(state, emits)``."""
    value = {"name": name, "at_ms": at_ms, "time": time, "payload": payload}
    raw = [(TIMER_TOPIC_PREFIX + "test", 0, 0, 0, key, [], None, json.dumps(value))]
    new_state, emits = _fold(component_class.impl, key, json.dumps(state), raw)
    return json.loads(new_state), [(t, k, json.loads(v)) for (t, k, v, _) in emits]


def route(component_class, value, key=None, topic="test"):
    """Native test helper: runs one JSON-compatible ``value`` through a
    :func:`handler` class; returns the emitted ``(topic, key, value)`` list."""
    emits = _route(component_class.impl, (topic, 0, 0, 0, key, [], None, json.dumps(value)))
    return [(t, k, json.loads(v)) for (t, k, v, _) in emits]
