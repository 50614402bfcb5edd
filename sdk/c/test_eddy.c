/*
 * Tests of the C SDK's JSON values, run natively:
 *   cc -std=c11 -Wall -Werror -I sdk/c sdk/c/eddy.c sdk/c/test_eddy.c -lm && ./a.out
 * (the AsyncProcess plugin in C tests the rest through the host).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eddy.h"

static int failures;

#define CHECK(cond)                                                  \
  do {                                                               \
    if (!(cond)) {                                                   \
      fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                    \
    }                                                                \
  } while (0)

/* Parses `in`, writes it back and compares with `out`. */
static void round_trip(const char *in, const char *out) {
  char error[128];
  eddy_json *v = eddy_parse(in, strlen(in), error, sizeof error);
  if (!v) {
    fprintf(stderr, "cannot parse %s: %s\n", in, error);
    failures++;
    return;
  }
  char *written = eddy_write(v, NULL);
  if (strcmp(written, out) != 0) {
    fprintf(stderr, "%s wrote %s, not %s\n", in, written, out);
    failures++;
  }
  free(written);
  eddy_free(v);
}

/* `in` is refused with an error containing `what`. */
static void refused(const char *in, size_t len, const char *what) {
  char error[128];
  eddy_json *v = eddy_parse(in, len, error, sizeof error);
  if (v || !strstr(error, what)) {
    fprintf(stderr, "%.*s: expected an error with \"%s\", got %s\n", (int)len, in, what,
            v ? "a value" : error);
    failures++;
  }
  eddy_free(v);
}

int main(void) {
  round_trip(" {\"a\" : [1, -2, 3.5, true, false, null], \"b\": {}} ",
             "{\"a\":[1,-2,3.5,true,false,null],\"b\":{}}");
  round_trip("\"tab\\t \\\"q\\\" \\\\ \\/ \\u00e9 \\ud83d\\ude00 \\u0001\"",
             "\"tab\\t \\\"q\\\" \\\\ / \xc3\xa9 \xf0\x9f\x98\x80 \\u0001\"");
  round_trip("[9223372036854775807,-9223372036854775808,9223372036854775808]",
             "[9223372036854775807,-9223372036854775808,9.223372036854776e18]");
  round_trip("[0.1,1e3,1.0,-0.0,2.5e-7,0.001,123.456,1e16,1.5e300,12e-6]",
             "[0.1,1000.0,1.0,-0.0,2.5e-7,0.001,123.456,1e16,1.5e300,0.000012]");
  round_trip("{\"k\":1,\"k\":2}", "{\"k\":2}");
  round_trip("[]", "[]");

  refused("", 0, "unexpected end of input at line 1 column 1");
  refused("{\"a\":1,}", 8, "expected a field name");
  refused("[1 2]", 5, "expected `,` or `]` at line 1 column 4");
  refused("{\n  \"a\": tru\n}", 13, "expected a value at line 2 column 8");
  refused("01", 2, "trailing characters");
  refused("1.", 2, "invalid number");
  refused("-", 1, "invalid number");
  refused("\"abc", 4, "unterminated string");
  refused("\"a\nb\"", 5, "control character");
  refused("\"\\x\"", 4, "invalid escape");
  refused("\"\\ud800\"", 8, "lone surrogate");
  refused("\"\\u12\"", 6, "invalid \\u escape");
  refused("[1] x", 5, "trailing characters");
  refused("{\"a\" 1}", 7, "expected `:`");
  refused("nul", 3, "expected a value");
  /* Embedded NUL bytes are not JSON. */
  refused("[1]\0", 4, "trailing characters");
  {
    char deep[300];
    memset(deep, '[', sizeof deep);
    refused(deep, sizeof deep, "nested too deep");
  }

  /* Building, reading and changing values. */
  eddy_json *o = eddy_object();
  CHECK(eddy_set(o, "n", eddy_int(41)));
  CHECK(eddy_set(o, "s", eddy_string("x")));
  CHECK(eddy_set(o, "list", eddy_array()));
  CHECK(eddy_set(o, "n", eddy_int(42)));
  int64_t n = 0;
  CHECK(eddy_as_int(eddy_get(o, "n"), &n) && n == 42);
  double d = 0;
  CHECK(eddy_as_float(eddy_get(o, "n"), &d) && d == 42.0);
  CHECK(!eddy_as_int(eddy_get(o, "s"), &n));
  CHECK(eddy_get(o, "missing") == NULL && eddy_kind(eddy_get(o, "missing")) == EDDY_JSON_NULL);
  CHECK(strcmp(eddy_as_string(eddy_get(o, "s"), NULL), "x") == 0);
  eddy_json *list = eddy_get(o, "list");
  CHECK(eddy_push(list, eddy_int(3)));
  CHECK(eddy_insert(list, 0, eddy_int(1)));
  CHECK(eddy_insert(list, 1, eddy_int(2)));
  CHECK(!eddy_insert(list, 9, eddy_int(9)));
  CHECK(!eddy_push(o, eddy_int(9)));
  CHECK(!eddy_set(list, "x", eddy_int(9)));
  CHECK(eddy_len(list) == 3 && eddy_at(list, 3) == NULL);
  CHECK(eddy_set(o, "f", eddy_float(NAN)));
  eddy_json *value = NULL;
  CHECK(strcmp(eddy_field_at(o, 0, &value), "n") == 0 && eddy_kind(value) == EDDY_JSON_INT);
  CHECK(eddy_field_at(o, 4, NULL) == NULL);
  char *text = eddy_write(o, NULL);
  CHECK(strcmp(text, "{\"n\":42,\"s\":\"x\",\"list\":[1,2,3],\"f\":null}") == 0);
  free(text);
  eddy_json *copy = eddy_clone(o);
  CHECK(eddy_remove(o, "s") && !eddy_remove(o, "s"));
  CHECK(eddy_len(o) == 3 && eddy_len(copy) == 4);
  eddy_replace(copy, eddy_string("whole"));
  CHECK(strcmp(eddy_as_string(copy, NULL), "whole") == 0);
  eddy_free(copy);
  eddy_free(o);

  if (failures) {
    fprintf(stderr, "%d failed\n", failures);
    return 1;
  }
  printf("C SDK: all passed\n");
  return 0;
}
