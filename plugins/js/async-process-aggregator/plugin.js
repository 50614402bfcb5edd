// The AsyncProcess aggregator of seed 000, in JavaScript.
//
// Executions are kept ordered by time (ties by execution id, then arrival);
// the process state and last update come from the latest execution, the
// description from the latest execution that has one.
import { defineAggregator, Invalid } from "eddy-sdk";

const STATES = new Set(["WAITING", "ACCEPTED", "STARTED", "DONE", "ERROR", "REJECTED", "RETRY"]);
const FIELDS = ["id", "asyncProcessId", "log", "description", "params", "time", "state"];

function before(a, b) {
  // (time, id) <= (time, id)
  return a.time < b.time || (a.time === b.time && a.id <= b.id);
}

export const aggregator = defineAggregator({
  init(key) {
    return { id: key, lastUpdate: null, description: null, state: null, executions: [] };
  },
  apply(process, event) {
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
    const execution = {};
    for (const f of FIELDS) execution[f] = e[f] === undefined ? null : e[f];
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
    return process;
  },
});
