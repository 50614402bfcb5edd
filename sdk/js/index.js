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
// for tests: see `fold`, `foldKeys`, `fire` and `route`.
//
// Timers: `out.setTimer(name, atMs, time = "wall", payload = null)` sets a
// timer on the key being folded (`"event"`: on the partition's watermark),
// `out.cancelTimer(name)` cancels it; when it fires, the aggregator's
// `onTimer(state, timer, out)` gets `{ name, atMs, time, payload }`.
//
// The component speaks the contract eddy:plugin@0.2.0 (one call folds many
// keys; states stay decoded between calls while the host names them by the
// version this instance gave them) or, built with `--contract 0.1.0`, the
// older one. States cross as JSON in both.

import { getEnvironment } from "wasi:cli/environment@0.2.10";

/**
 * The value of the environment variable `name` the host grants the plugin
 * (`[plugin.grants] env` in its config), or undefined: a plugin's settings.
 * Under Node (tests), the process's own environment.
 */
export function env(name) {
  for (const [k, v] of getEnvironment()) if (k === name) return v;
  return undefined;
}

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

/** An emit to this topic sets or cancels a timer instead of producing a record. */
export const TIMER_REQUEST_TOPIC = "__eddy.timers";
/** A fired timer arrives as an event of a topic that starts with this. */
export const TIMER_TOPIC_PREFIX = "__eddy.timers.";

/** Records produced while processing events. */
export class Output {
  constructor() {
    this.emits = [];
  }
  /** Produce `value` (serialised to JSON) to `topic` with an optional key. */
  emit(topic, key, value, headers = []) {
    this.emits.push({ topic, key: key ?? undefined, value: JSON.stringify(value), headers });
  }
  /**
   * Set (or replace) the timer `name` of the key being folded, due at `atMs`
   * (ms since the Unix epoch) on the `time` clock: "wall" (the host's) or
   * "event" (the partition's watermark).
   */
  setTimer(name, atMs, time = "wall", payload = null) {
    if (time !== "wall" && time !== "event") {
      throw new Fatal(`timer ${JSON.stringify(name)}: time ${JSON.stringify(time)} is neither "wall" nor "event"`);
    }
    this.emit(TIMER_REQUEST_TOPIC, undefined, { op: "set", name, at_ms: Math.trunc(Number(atMs)), time, payload });
  }
  /** Cancel the key's timer `name` (nothing when it has none). */
  cancelTimer(name) {
    this.emit(TIMER_REQUEST_TOPIC, undefined, { op: "cancel", name });
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
  if (err && err.stack) return { tag: "fatal", val: `${err}\n${sourceStack(err.stack)}` };
  return { tag: "fatal", val: String(err) };
}

// Source locations: the build appends the bundle's source map
// (`globalThis.__eddySourceMap`); a stack's bundle positions are mapped to
// the plugin's files and lines.
const BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
let mappedLines = null;

function vlq(segment) {
  const out = [];
  let shift = 0;
  let value = 0;
  for (const ch of segment) {
    const digit = BASE64.indexOf(ch);
    if (digit < 0) return [];
    value += (digit & 31) << shift;
    if (digit & 32) {
      shift += 5;
    } else {
      out.push(value & 1 ? -(value >> 1) : value >> 1);
      value = 0;
      shift = 0;
    }
  }
  return out;
}

function decodeMappings(mappings) {
  const lines = [];
  let source = 0;
  let line = 0;
  let column = 0;
  for (const text of mappings.split(";")) {
    const segments = [];
    let generated = 0;
    for (const segment of text ? text.split(",") : []) {
      const v = vlq(segment);
      if (v.length === 0) continue;
      generated += v[0];
      if (v.length >= 4) {
        source += v[1];
        line += v[2];
        column += v[3];
        segments.push([generated, source, line, column]);
      }
    }
    lines.push(segments);
  }
  return lines;
}

export function sourceStack(stack) {
  const map = globalThis.__eddySourceMap;
  if (!map || typeof stack !== "string") return stack;
  mappedLines ??= decodeMappings(map.mappings);
  return stack.replace(/[^\s@()]*plugin\.bundle\.js:(\d+):(\d+)/g, (whole, l, c) => {
    const segments = mappedLines[Number(l) - 1];
    if (!segments) return whole;
    let best = null;
    for (const s of segments) {
      if (s[0] <= Number(c) - 1) best = s;
      else break;
    }
    if (!best || map.sources[best[1]] === undefined) return whole;
    return `${map.sources[best[1]]}:${best[2] + 1}:${best[3] + 1}`;
  });
}

function headersOut(headers) {
  return headers.map(([name, value]) => ({
    name,
    value: typeof value === "string" ? new TextEncoder().encode(value) : value,
  }));
}

function load(key, stateJson) {
  if (stateJson === undefined || stateJson === null) return undefined;
  try {
    return JSON.parse(stateJson);
  } catch (err) {
    throw new Invalid(`stored state of key ${JSON.stringify(key)} does not decode: ${err.message}`);
  }
}

function applyAll(def, key, state, events) {
  if (state === undefined) state = def.init(key);
  const out = new Output();
  for (const e of events) {
    let next;
    if (e.topic.startsWith(TIMER_TOPIC_PREFIX)) {
      if (def.onTimer === undefined) continue;
      const t = decode(e);
      next = def.onTimer(state, { name: t.name, atMs: t.at_ms, time: t.time, payload: t.payload }, out);
    } else {
      next = def.apply(state, toEvent(e), out);
    }
    if (next !== undefined) state = next;
  }
  return [state, out.emits];
}

/** The JSON boundary of one key (the 0.1.0 contract): returns `[stateJson, emits]` or throws a Failure. */
export function foldJson(def, key, stateJson, events) {
  const [state, emits] = applyAll(def, key, load(key, stateJson), events);
  return [JSON.stringify(state), emits];
}

/**
 * Decoded states kept between calls (0.2.0), each under the version the host
 * gave it, within a budget of bytes (a state counts as eight times its JSON
 * size). Once full, a state not kept yet gets in one time in 64, in place of
 * older ones: the states kept stay kept, rather than each being dropped
 * before its key returns when the keys outnumber the budget.
 */
export class Resident {
  constructor(budget = 0) {
    this.states = new Map();
    this.bytes = 0;
    this.budget = budget;
    this.refused = 0;
  }
  take(key, version) {
    const kept = this.states.get(key);
    if (version === 0n || kept === undefined || kept.version !== version) return undefined;
    this.forget(key);
    return kept.state;
  }
  forget(key) {
    const kept = this.states.get(key);
    if (kept !== undefined) {
      this.states.delete(key);
      this.bytes -= kept.size;
    }
  }
  keep(key, version, state, encoded) {
    const size = encoded * 8 + key.length + 100;
    if (this.budget === 0 || size > this.budget / 4) return;
    this.forget(key);
    if (this.bytes + size > this.budget) {
      this.refused += 1;
      if (this.refused < 64) return;
      this.refused = 0;
      for (const k of this.states.keys()) {
        if (this.bytes + size <= this.budget) break;
        this.forget(k);
      }
    }
    this.states.set(key, { version, state, size });
    this.bytes += size;
  }
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/**
 * The 0.2.0 boundary: `batch` holds `{ key, state (Uint8Array JSON), version, nextVersion, events }`
 * (versions as BigInt); returns one `{ ok: [stateBytes, emits] }` or `{ err: Failure }` per key.
 */
export function foldKeys(def, resident, batch) {
  return batch.map((k) => {
    try {
      let state = resident.take(k.key, k.version);
      if (state === undefined && k.state !== undefined && k.state !== null) {
        state = load(k.key, decoder.decode(k.state));
      }
      const [next, emits] = applyAll(def, k.key, state, k.events);
      const bytes = encoder.encode(JSON.stringify(next));
      resident.keep(k.key, k.nextVersion, next, bytes.length);
      return { ok: [bytes, emits] };
    } catch (err) {
      resident.forget(k.key);
      return { err };
    }
  });
}

/** Wraps `{ init, apply }` as the component's `aggregator` export. */
export function defineAggregator(def) {
  const resident = new Resident();
  return {
    setup(settings) {
      resident.budget = Number(settings.residentBytes);
      return "json";
    },
    fold(batch) {
      return foldKeys(def, resident, batch).map((r) =>
        r.ok
          ? { tag: "ok", val: { state: r.ok[0], emits: r.ok[1].map((m) => ({ ...m, headers: headersOut(m.headers) })) } }
          : { tag: "err", val: failureOf(r.err) },
      );
    },
    apply(key, state, events) {
      try {
        const [json, emits] = foldJson(def, key, state, events);
        return { state: json, emits: emits.map((m) => ({ ...m, headers: headersOut(m.headers) })) };
      } catch (err) {
        throw { payload: failureOf(err) };
      }
    },
    definition: def,
    resident,
  };
}

/** Wraps `{ handle }` as the component's `handler` export. */
export function defineHandler(def) {
  return {
    handle(events) {
      return events.map((e) => {
        try {
          const out = new Output();
          if (e.topic.startsWith(TIMER_TOPIC_PREFIX)) {
            // A schedule's run, in a pipeline without an aggregator.
            const t = decode(e);
            if (def.onTimer !== undefined) def.onTimer({ name: t.name, atMs: t.at_ms, time: t.time, payload: t.payload }, out);
          } else {
            def.handle(toEvent(e), out);
          }
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

/** The header carrying the partition's watermark (once the pipeline has set an event-time timer). */
export const WATERMARK_HEADER = "eddy-watermark";

/** The watermark the host sent with `event`, or undefined. */
export function watermark(event) {
  const h = (event.headers ?? []).find(([name]) => name === WATERMARK_HEADER);
  if (h === undefined) return undefined;
  const text = typeof h[1] === "string" ? h[1] : new TextDecoder().decode(h[1]);
  const n = Number(text);
  return Number.isFinite(n) ? n : undefined;
}

/**
 * Event-time windows over a key's events, on timers (as the Rust SDK's
 * `eddy_sdk::windows`): `Windows.tumbling(sizeMs)`, `Windows.hopping(sizeMs,
 * advanceMs)` or `Windows.session(gapMs)`, each with a grace. A key's open
 * windows live in its state as an array of `{ start, end, value }`; `add`
 * folds an event into its windows (by its timestamp) and sets each new
 * window's event-time timer at its end plus the grace; `close`, in
 * `onTimer`, returns the window a timer closes. An event whose windows have
 * all closed throws an `Invalid` starting "late: " (dead-lettered with the
 * class `late`).
 */
export class Windows {
  constructor(kind, { sizeMs = 0, advanceMs = 0, gapMs = 0, graceMs = 0 } = {}) {
    Object.assign(this, { kind, size: sizeMs, advance: advanceMs, gap: gapMs, grace: graceMs });
  }
  static tumbling(sizeMs, graceMs = 0) {
    return new Windows("tumbling", { sizeMs: Math.max(1, sizeMs), graceMs });
  }
  static hopping(sizeMs, advanceMs, graceMs = 0) {
    return new Windows("hopping", { sizeMs: Math.max(1, sizeMs), advanceMs: Math.max(1, advanceMs), graceMs });
  }
  static session(gapMs, graceMs = 0) {
    return new Windows("session", { gapMs: Math.max(1, gapMs), graceMs });
  }
  spans(ts) {
    if (this.kind === "tumbling") {
      const start = Math.floor(ts / this.size) * this.size;
      return [[start, start + this.size]];
    }
    const spans = [];
    for (let start = Math.floor(ts / this.advance) * this.advance; start > ts - this.size; start -= this.advance) {
      spans.unshift([start, start + this.size]);
    }
    return spans;
  }
  late(end, mark) {
    return mark !== undefined && end + this.grace <= mark;
  }
  timer(out, start, end) {
    out.setTimer(`window@${start}`, end + this.grace, "event", { start, end });
  }
  lateFailure(ts, mark) {
    return new Invalid(`late: an event at ${ts} came after its window closed (watermark ${mark}, grace ${this.grace} ms)`);
  }
  /**
   * Folds `event` into its windows in `windows` (an array kept in the state):
   * `fold(value) => value`; new windows start from `init()`; sessions merge
   * with `merge(a, b) => value`.
   */
  add(windows, event, out, fold, init = () => 0, merge = undefined) {
    const ts = event.timestampMs;
    const mark = watermark(event);
    if (this.kind === "session") return this.addSession(windows, ts, mark, out, fold, init, merge);
    let added = false;
    for (const [start, end] of this.spans(ts)) {
      if (this.late(end, mark)) continue;
      let w = windows.find((x) => x.start === start);
      if (w === undefined) {
        w = { start, end, value: init() };
        windows.push(w);
        windows.sort((a, b) => a.start - b.start);
        this.timer(out, start, end);
      }
      w.value = fold(w.value);
      added = true;
    }
    if (!added) throw this.lateFailure(ts, mark);
  }
  addSession(windows, ts, mark, out, fold, init, merge) {
    let [start, end] = [ts, ts + this.gap];
    const touching = windows.filter((w) => w.start - this.gap <= ts && ts < w.end);
    if (touching.length === 0 && this.late(end, mark)) throw this.lateFailure(ts, mark);
    for (const w of touching) [start, end] = [Math.min(start, w.start), Math.max(end, w.end)];
    let value = init();
    for (const w of touching) {
      windows.splice(windows.indexOf(w), 1);
      if (w.start !== start) out.cancelTimer(`window@${w.start}`);
      value = merge ? merge(value, w.value) : w.value;
    }
    windows.push({ start, end, value: fold(value) });
    windows.sort((a, b) => a.start - b.start);
    this.timer(out, start, end);
  }
  /** The window `timer` closes, taken out of `windows`; undefined for another timer. */
  close(windows, timer) {
    if (!timer.name.startsWith("window@")) return undefined;
    const start = Number(timer.name.slice("window@".length));
    const at = windows.findIndex((w) => w.start === start);
    return at < 0 ? undefined : windows.splice(at, 1)[0];
  }
}

/** Node test helper: fires `key`'s timer `name` on `state`; returns `{ state, emits }`. */
export function fire(exported, key, state, name, { atMs = 0, time = "wall", payload = null } = {}) {
  const event = testEvent(TIMER_TOPIC_PREFIX + "test", 0, key, { name, at_ms: atMs, time, payload });
  const [json, emits] = foldJson(exported.definition, key, JSON.stringify(state), [event]);
  return { state: JSON.parse(json), emits: emits.map((m) => ({ topic: m.topic, key: m.key, value: JSON.parse(m.value) })) };
}

/** Node test helper: handles one `value`; returns the emitted records. */
export function route(exported, value, key = undefined) {
  const out = new Output();
  exported.definition.handle(toEvent(testEvent("test", 0, key, value)), out);
  return out.emits.map((m) => ({ topic: m.topic, key: m.key, value: JSON.parse(m.value) }));
}
