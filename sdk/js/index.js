// Write Eddy plugins in JavaScript.
//
// An Eddy plugin is a WebAssembly component built with componentize-js. This
// module hides the component's shapes (BigInt offsets, option and result
// encodings): define an aggregator with `init(key)` and
// `apply(state, event, out)`, or a handler with `handle(event, out)`, and
// export it under the interface name:
//
//   import { defineAggregator, Invalid } from "eddy-sdk";
//   export const aggregator = defineAggregator({
//     init: (key) => ({ count: 0 }),
//     apply: (state, event, out) => { state.count += 1; return state; },
//   });
//
// Values and state are plain JSON-decoded objects. Throw `Invalid`,
// `Retryable` or `Fatal` to fail an event. The same definitions run in Node
// for tests: see `fold` and `route`.

/** Base class of the failures a plugin may throw. */
export class Failure extends Error {
  get kind() {
    return "fatal";
  }
}
/** The input is wrong and will never succeed: it is dead-lettered. */
export class Invalid extends Failure {
  get kind() {
    return "invalid";
  }
}
/** A transient problem: the host retries with backoff. */
export class Retryable extends Failure {
  get kind() {
    return "retryable";
  }
}
/** The plugin cannot go on: dead-lettered, instance recycled. */
export class Fatal extends Failure {
  get kind() {
    return "fatal";
  }
}

/** Records produced while processing events. */
export class Output {
  constructor() {
    this.emits = [];
  }
  /** Produce `value` (serialised to JSON) to `topic` with an optional key. */
  emit(topic, key, value, headers = []) {
    this.emits.push({ topic, key: key ?? undefined, value: JSON.stringify(value), headers });
  }
}

function decode(e) {
  try {
    return JSON.parse(e.value);
  } catch (err) {
    throw new Invalid(`event ${e.topic}/${e.partition}@${e.offset} does not decode: ${err.message}`);
  }
}

function toEvent(e) {
  return {
    topic: e.topic,
    partition: e.partition,
    offset: Number(e.offset),
    timestampMs: Number(e.timestampMs),
    key: e.key ?? null,
    headers: (e.headers ?? []).map((h) => [h.name, h.value]),
    schemaId: e.schemaId ?? null,
    value: decode(e),
  };
}

function failureOf(err) {
  if (err instanceof Failure) return { tag: err.kind, val: err.message };
  return { tag: "fatal", val: String(err && err.stack ? err.stack : err) };
}

function headersOut(headers) {
  return headers.map(([name, value]) => ({
    name,
    value: typeof value === "string" ? new TextEncoder().encode(value) : value,
  }));
}

/** The JSON boundary of an aggregator: returns `[stateJson, emits]` or throws a Failure. */
export function foldJson(def, key, stateJson, events) {
  let state;
  if (stateJson === undefined || stateJson === null) {
    state = def.init(key);
  } else {
    try {
      state = JSON.parse(stateJson);
    } catch (err) {
      throw new Invalid(`stored state of key ${JSON.stringify(key)} does not decode: ${err.message}`);
    }
  }
  const out = new Output();
  for (const e of events) {
    const next = def.apply(state, toEvent(e), out);
    if (next !== undefined) state = next;
  }
  return [JSON.stringify(state), out.emits];
}

/** Wraps `{ init, apply }` as the component's `aggregator` export. */
export function defineAggregator(def) {
  return {
    apply(key, state, events) {
      try {
        const [json, emits] = foldJson(def, key, state, events);
        return { state: json, emits: emits.map((m) => ({ ...m, headers: headersOut(m.headers) })) };
      } catch (err) {
        throw { payload: failureOf(err) };
      }
    },
    definition: def,
  };
}

/** Wraps `{ handle }` as the component's `handler` export. */
export function defineHandler(def) {
  return {
    handle(events) {
      return events.map((e) => {
        try {
          const out = new Output();
          def.handle(toEvent(e), out);
          return { tag: "ok", val: out.emits.map((m) => ({ ...m, headers: headersOut(m.headers) })) };
        } catch (err) {
          return { tag: "err", val: failureOf(err) };
        }
      });
    },
    definition: def,
  };
}

function testEvent(topic, offset, key, value) {
  return { topic, partition: 0, offset: BigInt(offset), timestampMs: 0n, key, headers: [], value: JSON.stringify(value) };
}

/** Node test helper: folds `values` for `key`; returns `{ state, emits }` as the host would see them. */
export function fold(exported, key, values, state = undefined) {
  const events = values.map((v, i) => testEvent("test", i, key, v));
  const [json, emits] = foldJson(exported.definition, key, state === undefined ? undefined : JSON.stringify(state), events);
  return { state: JSON.parse(json), emits: emits.map((m) => ({ topic: m.topic, key: m.key, value: JSON.parse(m.value) })) };
}

/** Node test helper: handles one `value`; returns the emitted records. */
export function route(exported, value, key = undefined) {
  const out = new Output();
  exported.definition.handle(toEvent(testEvent("test", 0, key, value)), out);
  return out.emits.map((m) => ({ topic: m.topic, key: m.key, value: JSON.parse(m.value) }));
}
