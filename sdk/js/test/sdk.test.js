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
