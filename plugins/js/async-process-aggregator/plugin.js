// The AsyncProcess aggregator of seed 000, in JavaScript.
//
// Executions are kept ordered by time (ties by execution id, then arrival);
// the process state and last update come from the latest execution, the
// description from the latest execution that has one.
//
// With ASYNC_PROCESS_TIMEOUT_MS granted ([plugin.grants] env), a process left
// in STARTED or RETRY that long after its latest execution is marked ERROR
// by a timer (ASYNC_PROCESS_TIMEOUT_TOPIC also emits it there), as the Rust
// aggregator does.
import { defineAggregator, env, Invalid } from "eddy-sdk";

const STATES = new Set(["WAITING", "ACCEPTED", "STARTED", "DONE", "ERROR", "REJECTED", "RETRY"]);
const FIELDS = ["id", "asyncProcessId", "log", "description", "params", "time", "state"];
const WAITING = new Set(["STARTED", "RETRY"]);

let cached;
// Read from the granted environment on first use (not when the component is built).
function settings() {
  if (cached === undefined) {
    const timeout = (env("ASYNC_PROCESS_TIMEOUT_MS") ?? "").trim();
    cached = {
      timeout: /^[0-9]+$/.test(timeout) ? Number(timeout) : null,
      topic: env("ASYNC_PROCESS_TIMEOUT_TOPIC") || null,
    };
  }
  return cached;
}

function before(a, b) {
  // (time, id) <= (time, id)
  return a.time < b.time || (a.time === b.time && a.id <= b.id);
}

function add(process, execution) {
  let at = process.executions.length;
  while (at > 0 && !before(process.executions[at - 1], execution)) at -= 1;
  process.executions.splice(at, 0, execution);
  const latest = process.executions[process.executions.length - 1];
  process.lastUpdate = latest.time;
  process.state = latest.state;
  for (let i = process.executions.length - 1; i >= 0; i -= 1) {
    if (process.executions[i].description) {
      process.description = process.executions[i].description;
      break;
    }
  }
}

export const aggregator = defineAggregator({
  init(key) {
    return { id: key, lastUpdate: null, description: null, state: null, executions: [] };
  },
  apply(process, event, out) {
    const e = event.value;
    if (e === null || typeof e !== "object" || Array.isArray(e)) throw new Invalid("an execution must be a JSON object");
    for (const f of ["id", "asyncProcessId", "time", "state"]) {
      if (e[f] === undefined || e[f] === null) throw new Invalid(`missing field \`${f}\``);
    }
    if (!STATES.has(e.state)) throw new Invalid(`unknown variant \`${e.state}\``);
    if (!Number.isInteger(e.time)) throw new Invalid("`time` must be an integer");
    if (e.asyncProcessId !== process.id) {
      throw new Invalid(`execution ${e.id} belongs to process ${JSON.stringify(e.asyncProcessId)}, not to ${JSON.stringify(process.id)}`);
    }
    const was = process.state;
    const execution = {};
    for (const f of FIELDS) execution[f] = e[f] === undefined ? null : e[f];
    add(process, execution);
    const { timeout } = settings();
    if (timeout !== null) {
      if (WAITING.has(process.state) && process.lastUpdate !== null) {
        out.setTimer("timeout", process.lastUpdate + timeout, "wall", { lastUpdate: process.lastUpdate });
      } else if (WAITING.has(was)) {
        out.cancelTimer("timeout");
      }
    }
    return process;
  },
  onTimer(process, timer, out) {
    const { timeout, topic } = settings();
    if (timer.name !== "timeout" || !WAITING.has(process.state) || timeout === null) return process;
    const was = process.state;
    add(process, {
      id: `timeout@${timer.atMs}`, asyncProcessId: process.id, log: null,
      description: `no update for ${timeout} ms in ${was}`, params: null, time: timer.atMs, state: "ERROR",
    });
    out.cancelTimer("retry");
    if (topic) out.emit(topic, process.id, process);
    return process;
  },
});
