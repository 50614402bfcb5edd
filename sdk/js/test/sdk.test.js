// Native tests of the JavaScript SDK and the JavaScript AsyncProcess plugins:
// `npm test --prefix sdk/js`. The plugins import "eddy-sdk", which resolves to
// this package by name.
import { test } from "node:test";
import assert from "node:assert/strict";
import { fold, route, Invalid } from "../index.js";
import { aggregator } from "../../../plugins/js/async-process-aggregator/plugin.js";
import { handler } from "../../../plugins/js/rejected-process-router/plugin.js";

const execution = (id, p, time, state) => ({ id, asyncProcessId: p, time, state, description: `${state} step` });

test("orders executions by time and takes the latest state", () => {
  const { state, emits } = fold(aggregator, "p", [
    execution("b", "p", 20, "STARTED"),
    execution("a", "p", 10, "ACCEPTED"),
    execution("c", "p", 30, "DONE"),
  ]);
  assert.deepEqual(state.executions.map((e) => e.id), ["a", "b", "c"]);
  assert.equal(state.state, "DONE");
  assert.equal(state.lastUpdate, 30);
  assert.deepEqual(emits, []);
});

test("bad executions are invalid", () => {
  assert.throws(() => fold(aggregator, "p", [execution("a", "p", 1, "EXPLODED")]), Invalid);
  assert.throws(() => fold(aggregator, "p", [execution("a", "q", 1, "DONE")]), Invalid);
});

test("routes only rejected processes", () => {
  assert.deepEqual(route(handler, { id: "p", state: "REJECTED" }), [
    { topic: "rejected-process", key: "p", value: { id: "p", state: "REJECTED" } },
  ]);
  assert.deepEqual(route(handler, { id: "p", state: "DONE" }), []);
});

// The 0.2.0 boundary: many keys per call, resident states by version.
const ev = (key, offset, value) => ({
  topic: "test", partition: 0, offset: BigInt(offset), timestampMs: 0n, key, headers: [], value: JSON.stringify(value),
});
const bytes = (state) => new TextEncoder().encode(JSON.stringify(state));
const parse = (b) => JSON.parse(new TextDecoder().decode(b));

test("fold gives each key its own result and keeps a failure to its key", () => {
  const results = aggregator.fold([
    { key: "p", state: undefined, version: 0n, nextVersion: 1n, events: [ev("p", 0, execution("a", "p", 10, "ACCEPTED"))] },
    { key: "q", state: undefined, version: 0n, nextVersion: 2n, events: [ev("q", 1, execution("x", "q", 1, "EXPLODED"))] },
  ]);
  assert.equal(results[0].tag, "ok");
  assert.equal(parse(results[0].val.state).state, "ACCEPTED");
  assert.deepEqual(results[1], { tag: "err", val: { tag: "invalid", val: "unknown variant `EXPLODED`" } });
});

test("a resident state is used only at its version, and forgotten when its fold fails", () => {
  aggregator.setup({ residentBytes: 1n << 24n });
  const one = aggregator.fold([{ key: "k", version: 0n, nextVersion: 11n, events: [ev("k", 0, execution("a", "k", 1, "ACCEPTED"))] }]);
  const stale = bytes({ id: "k", lastUpdate: null, description: null, state: null, executions: [] });
  const two = aggregator.fold([{ key: "k", state: stale, version: 11n, nextVersion: 12n, events: [ev("k", 1, execution("b", "k", 2, "DONE"))] }]);
  assert.deepEqual(parse(two[0].val.state).executions.map((e) => e.id), ["a", "b"]);
  const other = aggregator.fold([{ key: "k", state: stale, version: 11n, nextVersion: 13n, events: [ev("k", 2, execution("c", "k", 3, "DONE"))] }]);
  assert.deepEqual(parse(other[0].val.state).executions.map((e) => e.id), ["c"]);
  const failed = aggregator.fold([
    { key: "k", state: one[0].val.state, version: 13n, nextVersion: 14n, events: [ev("k", 3, execution("d", "k", 4, "DONE")), ev("k", 4, execution("e", "k", 5, "EXPLODED"))] },
  ]);
  assert.equal(failed[0].tag, "err");
  assert.equal(aggregator.resident.states.has("k"), false);
});

test("setTimer is a request and onTimer gets the fired timer", async () => {
  const { defineAggregator, fire, Fatal, Output } = await import("../index.js");
  const reminder = defineAggregator({
    init: () => ({ fired: 0 }),
    apply: (state, event, out) => {
      out.setTimer("remind", event.value.at, "event", { note: event.value.note });
      return state;
    },
    onTimer: (state, timer, out) => {
      state.fired += 1;
      out.emit("reminders", undefined, { name: timer.name, at: timer.atMs, time: timer.time, note: timer.payload.note });
      return state;
    },
  });
  const { state, emits } = fold(reminder, "k", [{ at: 5, note: "hi" }]);
  assert.deepEqual(emits, [
    { topic: "__eddy.timers", key: undefined, value: { op: "set", name: "remind", at_ms: 5, time: "event", payload: { note: "hi" } } },
  ]);
  const fired = fire(reminder, "k", state, "remind", { atMs: 5, time: "event", payload: { note: "hi" } });
  assert.deepEqual(fired.state, { fired: 1 });
  assert.deepEqual(fired.emits, [{ topic: "reminders", key: undefined, value: { name: "remind", at: 5, time: "event", note: "hi" } }]);
  assert.throws(() => new Output().setTimer("t", 1, "cpu"), Fatal);
});

test("windows: tumbling counts close, late events fail, hopping and sessions", async () => {
  const { Windows, Output, Invalid } = await import("../index.js");
  const ev = (ts, mark) => ({ timestampMs: ts, headers: mark === undefined ? [] : [["eddy-watermark", String(mark)]] });
  const w = Windows.tumbling(10, 5);
  const windows = [];
  const out = new Output();
  for (const ts of [3, 12, 7, -1]) w.add(windows, ev(ts), out, (n) => n + 1);
  assert.deepEqual(windows.map((x) => [x.start, x.end, x.value]), [[-10, 0, 1], [0, 10, 2], [10, 20, 1]]);
  assert.equal(out.emits.length, 3);
  assert.equal(w.close(windows, { name: "window@0" }).value, 2);
  assert.throws(() => w.add(windows, ev(9, 15), out, (n) => n + 1), (e) => e instanceof Invalid && e.message.startsWith("late: "));
  w.add(windows, ev(14, 15), out, (n) => n + 1);

  const h = Windows.hopping(10, 5);
  const hw = [];
  h.add(hw, ev(7), out, (n) => n + 1);
  h.add(hw, ev(8, 12), out, (n) => n + 1);
  assert.deepEqual(hw.map((x) => [x.start, x.value]), [[0, 1], [5, 2]]);

  const s = Windows.session(20);
  const sw = [];
  const sout = new Output();
  for (const ts of [0, 30, 5, 22]) s.add(sw, ev(ts), sout, (n) => n + 1, () => 0, (a, b) => a + b);
  assert.deepEqual(sw.map((x) => [x.start, x.end, x.value]), [[0, 50, 4]]);
  assert.ok(sout.emits.some((e) => e.value === JSON.stringify({ op: "cancel", name: "window@30" })));
});
