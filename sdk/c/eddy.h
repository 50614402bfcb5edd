/*
 * Eddy's C SDK: write an aggregator or a handler as plain C functions.
 *
 * `eddy plugin build` compiles a plugin's `.c` files with this SDK and the
 * bindings of the plugin contract (WIT, through wit-bindgen's C generator)
 * for wasm32-wasi, against wasi-libc, and makes a component of them. The
 * plugin includes only this header.
 *
 * An aggregator defines
 *
 *     eddy_json *eddy_init(const char *key);
 *     eddy_status eddy_apply(eddy_json *state, const eddy_event *event, eddy_out *out);
 *
 * and may define `eddy_on_timer` (see below). `eddy_init` returns a new
 * key's first state; `eddy_apply` folds one event into `state`, changing it
 * in place (`eddy_replace` swaps it whole), and returns EDDY_OK or the
 * failure `eddy_fail` recorded. A key whose fold fails keeps the state it
 * had: none of its events in the micro-batch are applied (the host then
 * retries them one by one and dead-letters the one that fails).
 *
 * A handler defines
 *
 *     eddy_status eddy_handle(const eddy_event *event, eddy_out *out);
 *
 * which emits zero or more records per event.
 *
 * A failed `assert()` is logged with its place (`assertion failed at
 * plugin.c:16 in eddy_apply: ...`) and traps: the event is dead-lettered
 * as fatal with that line first, and the instance recycled.
 *
 * States are JSON. Everything the SDK hands a plugin (events, values,
 * states) is owned by the SDK and freed after the call; values a plugin
 * builds and puts into a state or an array are owned by that container.
 */
#ifndef EDDY_H
#define EDDY_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ JSON */

/* What a JSON value holds. Numbers written without a fraction or an
 * exponent that fit in 64 bits are integers; other numbers are floats. */
typedef enum {
  EDDY_JSON_NULL,
  EDDY_JSON_BOOL,
  EDDY_JSON_INT,
  EDDY_JSON_FLOAT,
  EDDY_JSON_STRING,
  EDDY_JSON_ARRAY,
  EDDY_JSON_OBJECT,
} eddy_json_kind;

typedef struct eddy_json eddy_json;

/* Parses `len` bytes of JSON text (RFC 8259, nesting at most 128 deep).
 * Returns NULL on an error, described in `error` (which may be NULL) with
 * its line and column. */
eddy_json *eddy_parse(const char *text, size_t len, char *error, size_t error_size);
/* Writes `value` as compact JSON: a NUL-terminated string the caller
 * frees, its length in `*len` (when not NULL). A float that is not finite
 * is written as null. */
char *eddy_write(const eddy_json *value, size_t *len);
/* Frees a value and everything in it (NULL is fine). */
void eddy_free(eddy_json *value);
/* A deep copy. */
eddy_json *eddy_clone(const eddy_json *value);
/* Moves `from` into `to` (whose old contents are freed) and frees the
 * emptied `from`: how an apply replaces its state whole. */
void eddy_replace(eddy_json *to, eddy_json *from);

/* New values. */
eddy_json *eddy_null(void);
eddy_json *eddy_bool(bool b);
eddy_json *eddy_int(int64_t i);
eddy_json *eddy_float(double d);
eddy_json *eddy_string(const char *s);
eddy_json *eddy_string_n(const char *s, size_t len);
eddy_json *eddy_array(void);
eddy_json *eddy_object(void);

/* What `value` is; a NULL value counts as null. */
eddy_json_kind eddy_kind(const eddy_json *value);
/* The text of a string, NUL-terminated (`len` may be NULL); NULL when the
 * value is not a string. */
const char *eddy_as_string(const eddy_json *value, size_t *len);
/* True and the number in `*out` when the value is an integer. */
bool eddy_as_int(const eddy_json *value, int64_t *out);
/* True and the number in `*out` when the value is any number. */
bool eddy_as_float(const eddy_json *value, double *out);
/* True and the boolean in `*out` when the value is a boolean. */
bool eddy_as_bool(const eddy_json *value, bool *out);

/* The number of items of an array or fields of an object, else 0. */
size_t eddy_len(const eddy_json *value);
/* An array's item `i`, or NULL. */
eddy_json *eddy_at(const eddy_json *array, size_t i);
/* An object's field, or NULL when it has none. */
eddy_json *eddy_get(const eddy_json *object, const char *field);
/* An object's field `i` (in the order they were read or set): its name
 * returned, its value in `*value` when not NULL; NULL past the end. */
const char *eddy_field_at(const eddy_json *object, size_t i, eddy_json **value);
/* Sets a field of an object, taking `value` (replacing the field's value
 * in place when it has one). Returns false, and frees `value`, when
 * `object` is not an object. */
bool eddy_set(eddy_json *object, const char *field, eddy_json *value);
/* Removes a field; true when it was there. */
bool eddy_remove(eddy_json *object, const char *field);
/* Appends to an array, taking `value`; false (and `value` freed) when
 * `array` is not an array. */
bool eddy_push(eddy_json *array, eddy_json *value);
/* Inserts into an array before item `at` (at most its length), taking
 * `value`; false (and `value` freed) otherwise. */
bool eddy_insert(eddy_json *array, size_t at, eddy_json *value);

/* ---------------------------------------------------------------- events */

/* A record header: a name and opaque bytes. */
typedef struct {
  const char *name;
  const uint8_t *value;
  size_t len;
} eddy_header;

/* One input event. */
typedef struct {
  /* The topic, partition and offset it was read from. */
  const char *topic;
  int32_t partition;
  int64_t offset;
  /* When it was produced, in ms since the Unix epoch. */
  int64_t timestamp_ms;
  /* The record key; NULL when the record has none. */
  const char *key;
  /* Its headers, in order. */
  const eddy_header *headers;
  size_t header_count;
  /* The Avro schema id it was written with, when `has_schema_id`. */
  bool has_schema_id;
  uint32_t schema_id;
  /* The value, decoded. */
  const eddy_json *value;
} eddy_event;

/* The value of the header `name` (its length in `*len`), or NULL. */
const uint8_t *eddy_header_value(const eddy_event *event, const char *name, size_t *len);

/* A timer that fired (see `eddy_set_timer`). */
typedef struct {
  const char *name;
  /* The instant it was set for. */
  int64_t at_ms;
  /* "wall" or "event". */
  const char *time;
  /* What was set with it (null when nothing). */
  const eddy_json *payload;
} eddy_timer;

/* ---------------------------------------------------------------- output */

/* How a call ends. */
typedef enum {
  EDDY_OK = 0,
  /* The input is wrong and will never succeed: dead-letter it. A message
   * starting with `late: ` gives the dead letter the class `late`. */
  EDDY_INVALID,
  /* A transient problem: the host may try again later. */
  EDDY_RETRYABLE,
  /* The plugin cannot go on: dead-letter the input, recycle the instance. */
  EDDY_FATAL,
} eddy_status;

/* What a call produces: records, timers and its failure. */
typedef struct eddy_out eddy_out;

/* Produces `value` (copied) to `topic`, with `key` (NULL for none), in the
 * same atomic commit as the state change. */
void eddy_emit(eddy_out *out, const char *topic, const char *key, const eddy_json *value);
/* Sets (or replaces) the folded key's timer `name`, due at `at_ms` on the
 * host's clock (`event_time` false) or the partition's watermark (true),
 * with a `payload` (copied; NULL for none). */
void eddy_set_timer(eddy_out *out, const char *name, int64_t at_ms, bool event_time,
                    const eddy_json *payload);
/* Cancels the folded key's timer `name` (nothing when it has none). */
void eddy_cancel_timer(eddy_out *out, const char *name);
/* Records why the call fails (printf-style) and returns `status`:
 * `return eddy_fail(out, EDDY_INVALID, "missing field `%s`", "id");` */
eddy_status eddy_fail(eddy_out *out, eddy_status status, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

/* ------------------------------------------------------------ the plugin */

/* Severity of a log line. */
typedef enum {
  EDDY_TRACE,
  EDDY_DEBUG,
  EDDY_INFO,
  EDDY_WARN,
  EDDY_ERROR,
} eddy_level;

/* Writes a line to the host's log (printf-style), tagged with the key and
 * offset of the event being processed. */
void eddy_log(eddy_level level, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* A variable of the environment the host grants the plugin
 * (`[plugin.grants] env`), or NULL. */
const char *eddy_env(const char *name);

/* Defined by an aggregator. */
eddy_json *eddy_init(const char *key);
eddy_status eddy_apply(eddy_json *state, const eddy_event *event, eddy_out *out);
/* An aggregator's fired timer; timers are ignored when it is not defined. */
eddy_status eddy_on_timer(eddy_json *state, const eddy_timer *timer, eddy_out *out);

/* Defined by a handler. */
eddy_status eddy_handle(const eddy_event *event, eddy_out *out);
/* A schedule's run in a pipeline without an aggregator; optional. */
eddy_status eddy_handle_timer(const eddy_timer *timer, eddy_out *out);

#ifdef __cplusplus
}
#endif

#endif /* EDDY_H */
