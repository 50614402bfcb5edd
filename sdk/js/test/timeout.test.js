// The JavaScript AsyncProcess aggregator's timeout, natively: its own test
// file, so its own process and environment (the plugin reads its settings
// once, on first use).
import { test } from "node:test";
import assert from "node:assert/strict";
import { fold, fire } from "../index.js";
import { aggregator } from "../../../plugins/js/async-process-aggregator/plugin.js";

process.env.ASYNC_PROCESS_TIMEOUT_MS = "1000";
process.env.ASYNC_PROCESS_TIMEOUT_TOPIC = "timed-out";

const execution = (id, p, time, state) => ({ id, asyncProcessId: p, time, state, description: `${state} step` });

test("a started process sets a timeout and times out to ERROR", () => {
  const { state, emits } = fold(aggregator, "p", [execution("a", "p", 10000, "STARTED")]);
  assert.deepEqual(emits, [
    { topic: "__eddy.timers", key: undefined, value: { op: "set", name: "timeout", at_ms: 11000, time: "wall", payload: { lastUpdate: 10000 } } },
  ]);
  const fired = fire(aggregator, "p", state, "timeout", { atMs: 11000 });
  assert.equal(fired.state.state, "ERROR");
  assert.equal(fired.state.lastUpdate, 11000);
  assert.equal(fired.state.executions.at(-1).id, "timeout@11000");
  assert.equal(fired.state.executions.at(-1).description, "no update for 1000 ms in STARTED");
  assert.deepEqual(fired.emits.map((e) => e.topic), ["__eddy.timers", "timed-out"]);
});

test("a finished process cancels it", () => {
  const { state } = fold(aggregator, "p", [execution("a", "p", 10, "STARTED")]);
  const { emits } = fold(aggregator, "p", [execution("b", "p", 20, "DONE")], state);
  assert.deepEqual(emits, [{ topic: "__eddy.timers", key: undefined, value: { op: "cancel", name: "timeout" } }]);
});
