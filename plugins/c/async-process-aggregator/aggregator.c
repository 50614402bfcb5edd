/*
 * The AsyncProcess aggregator of seed 000, in C.
 *
 * Executions are kept ordered by time (ties by execution id, then
 * arrival); the process state and last update come from the latest
 * execution, the description from the latest execution that has one.
 *
 * With ASYNC_PROCESS_TIMEOUT_MS granted ([plugin.grants] env), a process
 * left in STARTED or RETRY that long after its latest execution is marked
 * ERROR by a timer (ASYNC_PROCESS_TIMEOUT_TOPIC also emits it there), as
 * the Rust aggregator does.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eddy.h"

static const char *const STATES[] = {"WAITING", "ACCEPTED", "STARTED", "DONE",
                                     "ERROR",   "REJECTED", "RETRY"};
static const char *const FIELDS[] = {"id", "asyncProcessId", "log", "description",
                                     "params", "time", "state"};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Read from the granted environment on first use. */
static bool read_settings;
static bool has_timeout;
static int64_t timeout_ms;
static const char *timeout_topic;

static void settings(void) {
  if (read_settings) return;
  read_settings = true;
  const char *t = eddy_env("ASYNC_PROCESS_TIMEOUT_MS");
  char *end;
  if (t && *t) {
    long long v = strtoll(t, &end, 10);
    if (*end == '\0' && v >= 0) {
      has_timeout = true;
      timeout_ms = v;
    }
  }
  const char *topic = eddy_env("ASYNC_PROCESS_TIMEOUT_TOPIC");
  timeout_topic = topic && *topic ? topic : NULL;
}

static const char *text(const eddy_json *v) { return eddy_as_string(v, NULL); }

static bool waiting(const eddy_json *process) {
  const char *s = text(eddy_get(process, "state"));
  return s && (strcmp(s, "STARTED") == 0 || strcmp(s, "RETRY") == 0);
}

/* (time, id) ordering of executions. */
static int compare(int64_t time, const char *id, const eddy_json *e) {
  int64_t t = 0;
  eddy_as_int(eddy_get(e, "time"), &t);
  if (time != t) return time < t ? -1 : 1;
  return strcmp(id, text(eddy_get(e, "id")));
}

/* Adds an execution (taken) after every one not later than it, then
 * recomputes the derived fields. */
static void add(eddy_json *process, eddy_json *execution) {
  eddy_json *executions = eddy_get(process, "executions");
  int64_t time = 0;
  eddy_as_int(eddy_get(execution, "time"), &time);
  const char *id = text(eddy_get(execution, "id"));
  /* Binary search: the first execution later than this one. */
  size_t lo = 0, hi = eddy_len(executions);
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (compare(time, id, eddy_at(executions, mid)) < 0)
      hi = mid;
    else
      lo = mid + 1;
  }
  size_t at = lo;
  eddy_insert(executions, at, execution);
  size_t n = eddy_len(executions);
  eddy_json *latest = eddy_at(executions, n - 1);
  eddy_set(process, "lastUpdate", eddy_clone(eddy_get(latest, "time")));
  eddy_set(process, "state", eddy_clone(eddy_get(latest, "state")));
  for (size_t i = n; i > 0; i--) {
    const char *d = text(eddy_get(eddy_at(executions, i - 1), "description"));
    if (d && *d) {
      eddy_set(process, "description", eddy_string(d));
      break;
    }
  }
}

eddy_json *eddy_init(const char *key) {
  eddy_json *p = eddy_object();
  eddy_set(p, "id", eddy_string(key));
  eddy_set(p, "lastUpdate", eddy_null());
  eddy_set(p, "description", eddy_null());
  eddy_set(p, "state", eddy_null());
  eddy_set(p, "executions", eddy_array());
  return p;
}

eddy_status eddy_apply(eddy_json *process, const eddy_event *event, eddy_out *out) {
  const eddy_json *e = event->value;
  if (eddy_kind(e) != EDDY_JSON_OBJECT)
    return eddy_fail(out, EDDY_INVALID, "an execution must be a JSON object");
  static const char *const required[] = {"id", "asyncProcessId", "time", "state"};
  for (size_t i = 0; i < COUNT(required); i++)
    if (eddy_kind(eddy_get(e, required[i])) == EDDY_JSON_NULL)
      return eddy_fail(out, EDDY_INVALID, "missing field `%s`", required[i]);
  const char *id = text(eddy_get(e, "id"));
  const char *owner = text(eddy_get(e, "asyncProcessId"));
  if (!id || !owner)
    return eddy_fail(out, EDDY_INVALID, "`id` and `asyncProcessId` must be strings");
  const char *state = text(eddy_get(e, "state"));
  bool known = false;
  for (size_t i = 0; state && i < COUNT(STATES); i++) known = known || strcmp(state, STATES[i]) == 0;
  if (!known) {
    char *shown = eddy_write(eddy_get(e, "state"), NULL);
    eddy_status s = eddy_fail(out, EDDY_INVALID, "unknown variant `%s`", state ? state : shown);
    free(shown);
    return s;
  }
  if (!eddy_as_int(eddy_get(e, "time"), NULL))
    return eddy_fail(out, EDDY_INVALID, "`time` must be an integer");
  for (size_t i = 2; i < 5; i++) {
    eddy_json_kind k = eddy_kind(eddy_get(e, FIELDS[i]));
    if (k != EDDY_JSON_NULL && k != EDDY_JSON_STRING)
      return eddy_fail(out, EDDY_INVALID, "`%s` must be a string", FIELDS[i]);
  }
  const char *process_id = text(eddy_get(process, "id"));
  if (!process_id || strcmp(owner, process_id) != 0)
    return eddy_fail(out, EDDY_INVALID, "execution %s belongs to process \"%s\", not to \"%s\"", id,
                     owner, process_id ? process_id : "");
  bool was_waiting = waiting(process);
  eddy_json *execution = eddy_object();
  for (size_t i = 0; i < COUNT(FIELDS); i++)
    eddy_set(execution, FIELDS[i], eddy_clone(eddy_get(e, FIELDS[i])));
  add(process, execution);
  settings();
  if (has_timeout) {
    int64_t last = 0;
    if (waiting(process) && eddy_as_int(eddy_get(process, "lastUpdate"), &last)) {
      eddy_json *payload = eddy_object();
      eddy_set(payload, "lastUpdate", eddy_int(last));
      eddy_set_timer(out, "timeout", last + timeout_ms, false, payload);
      eddy_free(payload);
    } else if (was_waiting) {
      eddy_cancel_timer(out, "timeout");
    }
  }
  return EDDY_OK;
}

eddy_status eddy_on_timer(eddy_json *process, const eddy_timer *timer, eddy_out *out) {
  settings();
  if (strcmp(timer->name, "timeout") != 0 || !waiting(process) || !has_timeout) return EDDY_OK;
  const char *was = text(eddy_get(process, "state"));
  char id[48], description[96];
  snprintf(id, sizeof id, "timeout@%lld", (long long)timer->at_ms);
  snprintf(description, sizeof description, "no update for %lld ms in %s", (long long)timeout_ms,
           was);
  eddy_json *execution = eddy_object();
  eddy_set(execution, "id", eddy_string(id));
  eddy_set(execution, "asyncProcessId", eddy_clone(eddy_get(process, "id")));
  eddy_set(execution, "log", eddy_null());
  eddy_set(execution, "description", eddy_string(description));
  eddy_set(execution, "params", eddy_null());
  eddy_set(execution, "time", eddy_int(timer->at_ms));
  eddy_set(execution, "state", eddy_string("ERROR"));
  add(process, execution);
  eddy_cancel_timer(out, "retry");
  if (timeout_topic) eddy_emit(out, timeout_topic, text(eddy_get(process, "id")), process);
  return EDDY_OK;
}
