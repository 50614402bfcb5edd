/*
 * Eddy's C SDK (see eddy.h): JSON values, and the glue between the
 * contract's exports (the bindings wit-bindgen generates for the plugin's
 * world) and the plugin's functions.
 *
 * `eddy plugin build` compiles it with -DEDDY_AGGREGATOR or -DEDDY_HANDLER;
 * without either only the JSON part is compiled (the SDK's native tests).
 */
#include "eddy.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Running out of memory ends the call: the host recycles the instance. */
static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) abort();
  return p;
}

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) abort();
  return q;
}

static char *xstrndup(const char *s, size_t len) {
  char *d = xmalloc(len + 1);
  if (len) memcpy(d, s, len);
  d[len] = '\0';
  return d;
}

/* ------------------------------------------------------------------ JSON */

typedef struct {
  char *name;
  eddy_json *value;
} field;

struct eddy_json {
  eddy_json_kind kind;
  union {
    bool b;
    int64_t i;
    double f;
    struct {
      char *ptr;
      size_t len;
    } s;
    struct {
      eddy_json **items;
      size_t len, cap;
    } a;
    struct {
      field *fields;
      size_t len, cap;
    } o;
  } u;
};

static eddy_json *new_value(eddy_json_kind kind) {
  eddy_json *v = xmalloc(sizeof *v);
  memset(v, 0, sizeof *v);
  v->kind = kind;
  return v;
}

eddy_json *eddy_null(void) { return new_value(EDDY_JSON_NULL); }

eddy_json *eddy_bool(bool b) {
  eddy_json *v = new_value(EDDY_JSON_BOOL);
  v->u.b = b;
  return v;
}

eddy_json *eddy_int(int64_t i) {
  eddy_json *v = new_value(EDDY_JSON_INT);
  v->u.i = i;
  return v;
}

eddy_json *eddy_float(double d) {
  eddy_json *v = new_value(EDDY_JSON_FLOAT);
  v->u.f = d;
  return v;
}

eddy_json *eddy_string_n(const char *s, size_t len) {
  eddy_json *v = new_value(EDDY_JSON_STRING);
  v->u.s.ptr = xstrndup(s ? s : "", s ? len : 0);
  v->u.s.len = s ? len : 0;
  return v;
}

eddy_json *eddy_string(const char *s) { return eddy_string_n(s, s ? strlen(s) : 0); }

eddy_json *eddy_array(void) { return new_value(EDDY_JSON_ARRAY); }

eddy_json *eddy_object(void) { return new_value(EDDY_JSON_OBJECT); }

/* Frees what `v` holds, not `v` itself. */
static void clear(eddy_json *v) {
  switch (v->kind) {
    case EDDY_JSON_STRING:
      free(v->u.s.ptr);
      break;
    case EDDY_JSON_ARRAY:
      for (size_t i = 0; i < v->u.a.len; i++) eddy_free(v->u.a.items[i]);
      free(v->u.a.items);
      break;
    case EDDY_JSON_OBJECT:
      for (size_t i = 0; i < v->u.o.len; i++) {
        free(v->u.o.fields[i].name);
        eddy_free(v->u.o.fields[i].value);
      }
      free(v->u.o.fields);
      break;
    default:
      break;
  }
  memset(&v->u, 0, sizeof v->u);
  v->kind = EDDY_JSON_NULL;
}

void eddy_free(eddy_json *v) {
  if (!v) return;
  clear(v);
  free(v);
}

void eddy_replace(eddy_json *to, eddy_json *from) {
  if (!to || !from || to == from) return;
  clear(to);
  *to = *from;
  free(from);
}

eddy_json *eddy_clone(const eddy_json *v) {
  if (!v) return eddy_null();
  switch (v->kind) {
    case EDDY_JSON_BOOL:
      return eddy_bool(v->u.b);
    case EDDY_JSON_INT:
      return eddy_int(v->u.i);
    case EDDY_JSON_FLOAT:
      return eddy_float(v->u.f);
    case EDDY_JSON_STRING:
      return eddy_string_n(v->u.s.ptr, v->u.s.len);
    case EDDY_JSON_ARRAY: {
      eddy_json *c = eddy_array();
      for (size_t i = 0; i < v->u.a.len; i++) eddy_push(c, eddy_clone(v->u.a.items[i]));
      return c;
    }
    case EDDY_JSON_OBJECT: {
      eddy_json *c = eddy_object();
      for (size_t i = 0; i < v->u.o.len; i++)
        eddy_set(c, v->u.o.fields[i].name, eddy_clone(v->u.o.fields[i].value));
      return c;
    }
    default:
      return eddy_null();
  }
}

eddy_json_kind eddy_kind(const eddy_json *v) { return v ? v->kind : EDDY_JSON_NULL; }

const char *eddy_as_string(const eddy_json *v, size_t *len) {
  if (!v || v->kind != EDDY_JSON_STRING) return NULL;
  if (len) *len = v->u.s.len;
  return v->u.s.ptr;
}

bool eddy_as_int(const eddy_json *v, int64_t *out) {
  if (!v || v->kind != EDDY_JSON_INT) return false;
  if (out) *out = v->u.i;
  return true;
}

bool eddy_as_float(const eddy_json *v, double *out) {
  if (!v) return false;
  if (v->kind == EDDY_JSON_INT) {
    if (out) *out = (double)v->u.i;
    return true;
  }
  if (v->kind != EDDY_JSON_FLOAT) return false;
  if (out) *out = v->u.f;
  return true;
}

bool eddy_as_bool(const eddy_json *v, bool *out) {
  if (!v || v->kind != EDDY_JSON_BOOL) return false;
  if (out) *out = v->u.b;
  return true;
}

size_t eddy_len(const eddy_json *v) {
  if (!v) return 0;
  if (v->kind == EDDY_JSON_ARRAY) return v->u.a.len;
  if (v->kind == EDDY_JSON_OBJECT) return v->u.o.len;
  return 0;
}

eddy_json *eddy_at(const eddy_json *v, size_t i) {
  if (!v || v->kind != EDDY_JSON_ARRAY || i >= v->u.a.len) return NULL;
  return v->u.a.items[i];
}

static field *find(const eddy_json *v, const char *name) {
  if (!v || v->kind != EDDY_JSON_OBJECT || !name) return NULL;
  for (size_t i = 0; i < v->u.o.len; i++)
    if (strcmp(v->u.o.fields[i].name, name) == 0) return &v->u.o.fields[i];
  return NULL;
}

eddy_json *eddy_get(const eddy_json *v, const char *name) {
  field *f = find(v, name);
  return f ? f->value : NULL;
}

const char *eddy_field_at(const eddy_json *v, size_t i, eddy_json **value) {
  if (!v || v->kind != EDDY_JSON_OBJECT || i >= v->u.o.len) return NULL;
  if (value) *value = v->u.o.fields[i].value;
  return v->u.o.fields[i].name;
}

/* Sets a field of the object `v`, taking `name` (malloc'd) and `value`. */
static void set_owned(eddy_json *v, char *name, eddy_json *value) {
  field *f = find(v, name);
  if (f) {
    free(name);
    eddy_free(f->value);
    f->value = value;
    return;
  }
  if (v->u.o.len == v->u.o.cap) {
    v->u.o.cap = v->u.o.cap ? v->u.o.cap * 2 : 8;
    v->u.o.fields = xrealloc(v->u.o.fields, v->u.o.cap * sizeof(field));
  }
  v->u.o.fields[v->u.o.len].name = name;
  v->u.o.fields[v->u.o.len].value = value;
  v->u.o.len++;
}

bool eddy_set(eddy_json *v, const char *name, eddy_json *value) {
  if (!value) value = eddy_null();
  if (!v || v->kind != EDDY_JSON_OBJECT || !name) {
    eddy_free(value);
    return false;
  }
  set_owned(v, xstrndup(name, strlen(name)), value);
  return true;
}

bool eddy_remove(eddy_json *v, const char *name) {
  field *f = find(v, name);
  if (!f) return false;
  size_t at = (size_t)(f - v->u.o.fields);
  free(f->name);
  eddy_free(f->value);
  memmove(f, f + 1, (v->u.o.len - at - 1) * sizeof(field));
  v->u.o.len--;
  return true;
}

bool eddy_insert(eddy_json *v, size_t at, eddy_json *value) {
  if (!value) value = eddy_null();
  if (!v || v->kind != EDDY_JSON_ARRAY || at > v->u.a.len) {
    eddy_free(value);
    return false;
  }
  if (v->u.a.len == v->u.a.cap) {
    v->u.a.cap = v->u.a.cap ? v->u.a.cap * 2 : 4;
    v->u.a.items = xrealloc(v->u.a.items, v->u.a.cap * sizeof(eddy_json *));
  }
  memmove(v->u.a.items + at + 1, v->u.a.items + at, (v->u.a.len - at) * sizeof(eddy_json *));
  v->u.a.items[at] = value;
  v->u.a.len++;
  return true;
}

bool eddy_push(eddy_json *v, eddy_json *value) {
  return eddy_insert(v, v && v->kind == EDDY_JSON_ARRAY ? v->u.a.len : 0, value);
}

/* --- reading */

#define MAX_DEPTH 128

typedef struct {
  const char *text;
  size_t len, pos;
  char *error;
  size_t error_size;
  bool failed;
} reader;

static void fail_at(reader *r, const char *what) {
  if (r->failed) return;
  r->failed = true;
  if (!r->error || !r->error_size) return;
  size_t line = 1, column = 1;
  for (size_t i = 0; i < r->pos && i < r->len; i++) {
    if (r->text[i] == '\n') {
      line++;
      column = 1;
    } else {
      column++;
    }
  }
  snprintf(r->error, r->error_size, "%s at line %zu column %zu", what, line, column);
}

static void skip_space(reader *r) {
  while (r->pos < r->len) {
    char c = r->text[r->pos];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    r->pos++;
  }
}

/* Skips the character `c` when it comes next. */
static bool eat(reader *r, char c) {
  if (r->pos >= r->len || r->text[r->pos] != c) return false;
  r->pos++;
  return true;
}

static bool literal(reader *r, const char *word) {
  size_t n = strlen(word);
  if (r->len - r->pos < n || memcmp(r->text + r->pos, word, n) != 0) return false;
  r->pos += n;
  return true;
}

static int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static bool read_hex4(reader *r, unsigned *out) {
  if (r->len - r->pos < 4) return false;
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hex(r->text[r->pos + (size_t)i]);
    if (h < 0) return false;
    v = v * 16 + (unsigned)h;
  }
  r->pos += 4;
  *out = v;
  return true;
}

typedef struct {
  char *ptr;
  size_t len, cap;
} buffer;

static void put(buffer *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1) cap *= 2;
    b->ptr = xrealloc(b->ptr, cap);
    b->cap = cap;
  }
  memcpy(b->ptr + b->len, s, n);
  b->len += n;
  b->ptr[b->len] = '\0';
}

static void put_utf8(buffer *b, unsigned cp) {
  char u[4];
  size_t n;
  if (cp < 0x80) {
    u[0] = (char)cp;
    n = 1;
  } else if (cp < 0x800) {
    u[0] = (char)(0xC0 | (cp >> 6));
    u[1] = (char)(0x80 | (cp & 0x3F));
    n = 2;
  } else if (cp < 0x10000) {
    u[0] = (char)(0xE0 | (cp >> 12));
    u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    u[2] = (char)(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    u[0] = (char)(0xF0 | (cp >> 18));
    u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    u[3] = (char)(0x80 | (cp & 0x3F));
    n = 4;
  }
  put(b, u, n);
}

/* Reads a string after its opening quote into `out` (malloc'd). */
static bool read_string(reader *r, char **out, size_t *out_len) {
  buffer b = {0};
  put(&b, "", 0);
  while (r->pos < r->len) {
    unsigned char c = (unsigned char)r->text[r->pos];
    if (c == '"') {
      r->pos++;
      *out = b.ptr;
      *out_len = b.len;
      return true;
    }
    if (c < 0x20) {
      fail_at(r, "control character in a string");
      break;
    }
    if (c != '\\') {
      size_t start = r->pos;
      while (r->pos < r->len && r->text[r->pos] != '"' && r->text[r->pos] != '\\' &&
             (unsigned char)r->text[r->pos] >= 0x20)
        r->pos++;
      put(&b, r->text + start, r->pos - start);
      continue;
    }
    r->pos++;
    if (r->pos >= r->len) break;
    char e = r->text[r->pos++];
    const char *simple = NULL;
    switch (e) {
      case '"': simple = "\""; break;
      case '\\': simple = "\\"; break;
      case '/': simple = "/"; break;
      case 'b': simple = "\b"; break;
      case 'f': simple = "\f"; break;
      case 'n': simple = "\n"; break;
      case 'r': simple = "\r"; break;
      case 't': simple = "\t"; break;
      case 'u': {
        unsigned cp;
        if (!read_hex4(r, &cp)) {
          fail_at(r, "invalid \\u escape");
          goto fail;
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          unsigned low;
          if (!literal(r, "\\u") || !read_hex4(r, &low) || low < 0xDC00 || low > 0xDFFF) {
            fail_at(r, "lone surrogate in a \\u escape");
            goto fail;
          }
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          fail_at(r, "lone surrogate in a \\u escape");
          goto fail;
        }
        put_utf8(&b, cp);
        continue;
      }
      default:
        r->pos--;
        fail_at(r, "invalid escape");
        goto fail;
    }
    put(&b, simple, 1);
  }
  fail_at(r, "unterminated string");
fail:
  free(b.ptr);
  return false;
}

/* Skips decimal digits; how many. */
static size_t skip_digits(reader *r) {
  size_t from = r->pos;
  while (r->pos < r->len && r->text[r->pos] >= '0' && r->text[r->pos] <= '9') r->pos++;
  return r->pos - from;
}

static eddy_json *read_number(reader *r) {
  size_t start = r->pos;
  bool integer = true;
  eat(r, '-');
  if (eat(r, '0')) {
    /* no leading zeros */
  } else if (skip_digits(r) == 0) {
    goto bad;
  }
  if (eat(r, '.')) {
    integer = false;
    if (skip_digits(r) == 0) goto bad;
  }
  if (eat(r, 'e') || eat(r, 'E')) {
    integer = false;
    if (!eat(r, '+')) eat(r, '-');
    if (skip_digits(r) == 0) goto bad;
  }
  {
    const char *text = r->text + start, *end = r->text + r->pos;
    eddy_json *v = NULL;
    if (integer) {
      /* Digits only: an overflow is the one way it can fail. */
      bool negative = text[0] == '-';
      uint64_t magnitude = 0;
      bool fits = true;
      for (const char *p = text + (negative ? 1 : 0); p < end; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (magnitude > (UINT64_MAX - d) / 10) {
          fits = false;
          break;
        }
        magnitude = magnitude * 10 + d;
      }
      if (fits && !negative && magnitude <= (uint64_t)INT64_MAX)
        v = eddy_int((int64_t)magnitude);
      else if (fits && negative && magnitude <= (uint64_t)INT64_MAX + 1)
        v = eddy_int(magnitude == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)magnitude);
    }
    if (!v) {
      char *copy = xstrndup(text, (size_t)(end - text));
      v = eddy_float(strtod(copy, NULL));
      free(copy);
    }
    return v;
  }
bad:
  fail_at(r, "invalid number");
  return NULL;
}

static eddy_json *read_value(reader *r, int depth) {
  if (depth > MAX_DEPTH) {
    fail_at(r, "nested too deep");
    return NULL;
  }
  skip_space(r);
  if (r->pos >= r->len) {
    fail_at(r, "unexpected end of input");
    return NULL;
  }
  char c = r->text[r->pos];
  if (c == '{') {
    r->pos++;
    eddy_json *o = eddy_object();
    skip_space(r);
    if (eat(r, '}')) return o;
    for (;;) {
      skip_space(r);
      if (!eat(r, '"')) {
        fail_at(r, "expected a field name");
        break;
      }
      char *name;
      size_t name_len;
      if (!read_string(r, &name, &name_len)) break;
      skip_space(r);
      if (!eat(r, ':')) {
        free(name);
        fail_at(r, "expected `:`");
        break;
      }
      eddy_json *value = read_value(r, depth + 1);
      if (!value) {
        free(name);
        break;
      }
      set_owned(o, name, value);
      skip_space(r);
      if (eat(r, ',')) continue;
      if (eat(r, '}')) return o;
      fail_at(r, "expected `,` or `}`");
      break;
    }
    eddy_free(o);
    return NULL;
  }
  if (c == '[') {
    r->pos++;
    eddy_json *a = eddy_array();
    skip_space(r);
    if (eat(r, ']')) return a;
    for (;;) {
      eddy_json *item = read_value(r, depth + 1);
      if (!item) break;
      eddy_push(a, item);
      skip_space(r);
      if (eat(r, ',')) continue;
      if (eat(r, ']')) return a;
      fail_at(r, "expected `,` or `]`");
      break;
    }
    eddy_free(a);
    return NULL;
  }
  if (c == '"') {
    r->pos++;
    char *s;
    size_t len;
    if (!read_string(r, &s, &len)) return NULL;
    eddy_json *v = new_value(EDDY_JSON_STRING);
    v->u.s.ptr = s;
    v->u.s.len = len;
    return v;
  }
  if (c == '-' || (c >= '0' && c <= '9')) return read_number(r);
  if (literal(r, "true")) return eddy_bool(true);
  if (literal(r, "false")) return eddy_bool(false);
  if (literal(r, "null")) return eddy_null();
  fail_at(r, "expected a value");
  return NULL;
}

eddy_json *eddy_parse(const char *text, size_t len, char *error, size_t error_size) {
  reader r = {text ? text : "", text ? len : 0, 0, error, error_size, false};
  if (error && error_size) error[0] = '\0';
  eddy_json *v = read_value(&r, 0);
  if (!v) return NULL;
  skip_space(&r);
  if (r.pos != r.len) {
    fail_at(&r, "trailing characters");
    eddy_free(v);
    return NULL;
  }
  return v;
}

/* --- writing */

static void write_string(buffer *b, const char *s, size_t len) {
  put(b, "\"", 1);
  size_t start = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    put(b, s + start, i - start);
    start = i + 1;
    char esc[8];
    switch (c) {
      case '"': put(b, "\\\"", 2); break;
      case '\\': put(b, "\\\\", 2); break;
      case '\n': put(b, "\\n", 2); break;
      case '\r': put(b, "\\r", 2); break;
      case '\t': put(b, "\\t", 2); break;
      case '\b': put(b, "\\b", 2); break;
      case '\f': put(b, "\\f", 2); break;
      default:
        snprintf(esc, sizeof esc, "\\u%04x", c);
        put(b, esc, 6);
    }
  }
  put(b, s + start, len - start);
  put(b, "\"", 1);
}

/* The shortest digits that read back as the same double, written as
 * serde_json (ryu) writes them: plain from 1e-5 to below 1e16 (`1000.0`,
 * `0.001`), else with an exponent (`1e16`, `2.5e-7`). */
static void write_float(buffer *b, double d) {
  if (!isfinite(d)) {
    put(b, "null", 4);
    return;
  }
  char sci[40];
  for (int precision = 0; precision <= 16; precision++) {
    snprintf(sci, sizeof sci, "%.*e", precision, d);
    if (strtod(sci, NULL) == d) break;
  }
  /* sci: [-]d[.ddd]e(+|-)xx */
  char digits[24];
  size_t n = 0;
  const char *p = sci;
  if (*p == '-') {
    put(b, "-", 1);
    p++;
  }
  for (; *p && *p != 'e' && n < sizeof digits - 1; p++)
    if (*p != '.') digits[n++] = *p;
  digits[n] = '\0';
  int exp = *p == 'e' ? atoi(p + 1) : 0;
  while (n > 1 && digits[n - 1] == '0') digits[--n] = '\0';
  static const char zeros[] = "000000000000000";
  if (exp >= 0 && exp < 16) {
    /* ddd.ddd, or the digits padded with zeros and `.0`. */
    size_t whole = (size_t)exp + 1;
    if (n <= whole) {
      put(b, digits, n);
      put(b, zeros, whole - n);
      put(b, ".0", 2);
    } else {
      put(b, digits, whole);
      put(b, ".", 1);
      put(b, digits + whole, n - whole);
    }
  } else if (exp < 0 && exp >= -5) {
    put(b, "0.", 2);
    put(b, zeros, (size_t)(-exp - 1));
    put(b, digits, n);
  } else {
    put(b, digits, 1);
    if (n > 1) {
      put(b, ".", 1);
      put(b, digits + 1, n - 1);
    }
    char e[16];
    snprintf(e, sizeof e, "e%d", exp);
    put(b, e, strlen(e));
  }
}

static void write_value(buffer *b, const eddy_json *v) {
  char num[32];
  switch (eddy_kind(v)) {
    case EDDY_JSON_NULL:
      put(b, "null", 4);
      break;
    case EDDY_JSON_BOOL:
      if (v->u.b)
        put(b, "true", 4);
      else
        put(b, "false", 5);
      break;
    case EDDY_JSON_INT: {
      /* Digits from the end; the magnitude as unsigned covers INT64_MIN. */
      uint64_t m = v->u.i < 0 ? (uint64_t)0 - (uint64_t)v->u.i : (uint64_t)v->u.i;
      size_t at = sizeof num;
      do {
        num[--at] = (char)('0' + m % 10);
        m /= 10;
      } while (m);
      if (v->u.i < 0) num[--at] = '-';
      put(b, num + at, sizeof num - at);
      break;
    }
    case EDDY_JSON_FLOAT:
      write_float(b, v->u.f);
      break;
    case EDDY_JSON_STRING:
      write_string(b, v->u.s.ptr, v->u.s.len);
      break;
    case EDDY_JSON_ARRAY:
      put(b, "[", 1);
      for (size_t i = 0; i < v->u.a.len; i++) {
        if (i) put(b, ",", 1);
        write_value(b, v->u.a.items[i]);
      }
      put(b, "]", 1);
      break;
    case EDDY_JSON_OBJECT:
      put(b, "{", 1);
      for (size_t i = 0; i < v->u.o.len; i++) {
        if (i) put(b, ",", 1);
        write_string(b, v->u.o.fields[i].name, strlen(v->u.o.fields[i].name));
        put(b, ":", 1);
        write_value(b, v->u.o.fields[i].value);
      }
      put(b, "}", 1);
      break;
  }
}

char *eddy_write(const eddy_json *v, size_t *len) {
  buffer b = {0};
  put(&b, "", 0);
  write_value(&b, v);
  if (len) *len = b.len;
  return b.ptr;
}

/* ---------------------------------------------------- output and events */

typedef struct {
  char *topic;
  char *key; /* NULL: none */
  char *value;
  size_t value_len;
} pending_emit;

struct eddy_out {
  pending_emit *emits;
  size_t len, cap;
  char *failure;
};

static void out_push(eddy_out *out, const char *topic, const char *key, char *value,
                     size_t value_len) {
  if (out->len == out->cap) {
    out->cap = out->cap ? out->cap * 2 : 4;
    out->emits = xrealloc(out->emits, out->cap * sizeof(pending_emit));
  }
  pending_emit *e = &out->emits[out->len++];
  e->topic = xstrndup(topic ? topic : "", topic ? strlen(topic) : 0);
  e->key = key ? xstrndup(key, strlen(key)) : NULL;
  e->value = value;
  e->value_len = value_len;
}

void eddy_emit(eddy_out *out, const char *topic, const char *key, const eddy_json *value) {
  if (!out) return;
  size_t len;
  char *text = eddy_write(value, &len);
  out_push(out, topic, key, text, len);
}

/* Where timer requests go; fired timers arrive from topics starting with
 * TIMER_REQUESTS ".". */
#define TIMER_REQUESTS "__eddy.timers"

void eddy_set_timer(eddy_out *out, const char *name, int64_t at_ms, bool event_time,
                    const eddy_json *payload) {
  eddy_json *request = eddy_object();
  eddy_set(request, "op", eddy_string("set"));
  eddy_set(request, "name", eddy_string(name));
  eddy_set(request, "at_ms", eddy_int(at_ms));
  eddy_set(request, "time", eddy_string(event_time ? "event" : "wall"));
  eddy_set(request, "payload", eddy_clone(payload));
  eddy_emit(out, TIMER_REQUESTS, NULL, request);
  eddy_free(request);
}

void eddy_cancel_timer(eddy_out *out, const char *name) {
  eddy_json *request = eddy_object();
  eddy_set(request, "op", eddy_string("cancel"));
  eddy_set(request, "name", eddy_string(name));
  eddy_emit(out, TIMER_REQUESTS, NULL, request);
  eddy_free(request);
}

static char *vformat(const char *format, va_list args) {
  va_list again;
  va_copy(again, args);
  int n = vsnprintf(NULL, 0, format, args);
  if (n < 0) n = 0;
  char *text = xmalloc((size_t)n + 1);
  vsnprintf(text, (size_t)n + 1, format, again);
  va_end(again);
  return text;
}

eddy_status eddy_fail(eddy_out *out, eddy_status status, const char *format, ...) {
  if (out) {
    va_list args;
    va_start(args, format);
    free(out->failure);
    out->failure = vformat(format, args);
    va_end(args);
  }
  return status;
}

const uint8_t *eddy_header_value(const eddy_event *event, const char *name, size_t *len) {
  if (!event || !name) return NULL;
  for (size_t i = 0; i < event->header_count; i++) {
    if (strcmp(event->headers[i].name, name) == 0) {
      if (len) *len = event->headers[i].len;
      return event->headers[i].value;
    }
  }
  return NULL;
}

const char *eddy_env(const char *name) { return name ? getenv(name) : NULL; }

/* Timers are ignored by a plugin that does not define these. */
__attribute__((weak)) eddy_status eddy_on_timer(eddy_json *state, const eddy_timer *timer,
                                                eddy_out *out) {
  (void)state;
  (void)timer;
  (void)out;
  return EDDY_OK;
}

__attribute__((weak)) eddy_status eddy_handle_timer(const eddy_timer *timer, eddy_out *out) {
  (void)timer;
  (void)out;
  return EDDY_OK;
}

/* ------------------------------------------------------------- the glue */

#if defined(EDDY_AGGREGATOR) || defined(EDDY_HANDLER)

#ifdef EDDY_AGGREGATOR
#include "aggregator_plugin.h"
typedef aggregator_plugin_string_t wit_string;
typedef aggregator_plugin_list_u8_t wit_bytes;
#define EXPORTS(name) exports_eddy_plugin_0_2_0_aggregator_##name
#else
#include "handler_plugin.h"
typedef handler_plugin_string_t wit_string;
typedef handler_plugin_list_u8_t wit_bytes;
#define EXPORTS(name) exports_eddy_plugin_0_2_0_handler_##name
#endif

typedef eddy_plugin_0_2_0_types_event_t wit_event;
typedef eddy_plugin_0_2_0_types_emit_t wit_emit;
typedef eddy_plugin_0_2_0_types_failure_t wit_failure;

static void out_clear(eddy_out *out) {
  for (size_t i = 0; i < out->len; i++) {
    free(out->emits[i].topic);
    free(out->emits[i].key);
    free(out->emits[i].value);
  }
  free(out->emits);
  free(out->failure);
  memset(out, 0, sizeof *out);
}

/* The event being processed, named in log lines. */
static const char *current_key;
static bool has_offset;
static int64_t current_offset;

void eddy_log(eddy_level level, const char *format, ...) {
  va_list args;
  va_start(args, format);
  char *text = vformat(format, args);
  va_end(args);
  wit_string message = {(uint8_t *)text, strlen(text)};
  wit_string key = {(uint8_t *)current_key, current_key ? strlen(current_key) : 0};
  int64_t offset = current_offset;
  eddy_plugin_0_2_0_host_log((eddy_plugin_0_2_0_host_level_t)level, &message,
                             current_key ? &key : NULL, has_offset ? &offset : NULL);
  free(text);
}

/* A failed assert(): logged with its place — the host puts the call's last
 * error line before the trap in the dead letter — then the trap. */
_Noreturn void __assert_fail(const char *expr, const char *file, int line, const char *func) {
  eddy_log(EDDY_ERROR, "assertion failed at %s:%d in %s: %s", file, line, func, expr);
  abort();
}

static char *cstr(const wit_string *s) { return xstrndup((const char *)s->ptr, s->len); }

/* A malloc'd buffer handed to the host (freed after the call returns). */
static wit_string give(char *text, size_t len) {
  if (!len) {
    free(text);
    return (wit_string){NULL, 0};
  }
  return (wit_string){(uint8_t *)text, len};
}

/* The C view of a contract event; `value` is not decoded yet. */
typedef struct {
  eddy_event event;
  char *topic, *key;
  eddy_header *headers;
} view;

static void view_open(view *v, const wit_event *e) {
  memset(v, 0, sizeof *v);
  v->topic = cstr(&e->topic);
  v->key = e->key.is_some ? cstr(&e->key.val) : NULL;
  v->headers = xmalloc(e->headers.len * sizeof(eddy_header));
  for (size_t i = 0; i < e->headers.len; i++) {
    v->headers[i].name = cstr(&e->headers.ptr[i].name);
    v->headers[i].value = e->headers.ptr[i].value.ptr;
    v->headers[i].len = e->headers.ptr[i].value.len;
  }
  v->event.topic = v->topic;
  v->event.partition = e->partition;
  v->event.offset = e->offset;
  v->event.timestamp_ms = e->timestamp_ms;
  v->event.key = v->key;
  v->event.headers = v->headers;
  v->event.header_count = e->headers.len;
  v->event.has_schema_id = e->schema_id.is_some;
  v->event.schema_id = e->schema_id.val;
}

static void view_close(view *v) {
  free(v->topic);
  free(v->key);
  for (size_t i = 0; i < v->event.header_count; i++) free((char *)v->headers[i].name);
  free(v->headers);
  eddy_free((eddy_json *)v->event.value);
}

/* Runs one event through the plugin: a fired timer or an event. `state` is
 * NULL in a handler. */
static eddy_status process(const wit_event *e, eddy_json *state, eddy_out *out) {
  view v;
  view_open(&v, e);
  has_offset = true;
  current_offset = e->offset;
  char error[160];
  eddy_json *value = eddy_parse((const char *)e->value.ptr, e->value.len, error, sizeof error);
  eddy_status status;
  if (!value) {
    status = eddy_fail(out, EDDY_INVALID, "event %s/%d@%lld does not decode: %s", v.topic,
                       (int)e->partition, (long long)e->offset, error);
  } else if (strncmp(v.topic, TIMER_REQUESTS ".", strlen(TIMER_REQUESTS ".")) == 0) {
    eddy_timer timer = {eddy_as_string(eddy_get(value, "name"), NULL), 0,
                        eddy_as_string(eddy_get(value, "time"), NULL), eddy_get(value, "payload")};
    eddy_as_int(eddy_get(value, "at_ms"), &timer.at_ms);
    if (!timer.name) timer.name = "";
    if (!timer.time) timer.time = "wall";
    status = state ? eddy_on_timer(state, &timer, out) : eddy_handle_timer(&timer, out);
  } else {
    v.event.value = value;
    value = NULL;
#ifdef EDDY_AGGREGATOR
    status = eddy_apply(state, &v.event, out);
#else
    status = eddy_handle(&v.event, out);
#endif
  }
  eddy_free(value);
  view_close(&v);
  has_offset = false;
  return status;
}

/* The contract's failure for a status and what `eddy_fail` recorded. */
static wit_failure failure_of(eddy_status status, eddy_out *out, const char *who) {
  wit_failure f;
  char *message = out->failure;
  out->failure = NULL;
  if (!message) {
    const char *text = status == EDDY_INVALID     ? "invalid input"
                       : status == EDDY_RETRYABLE ? "failed, may be retried"
                                                  : "failed";
    size_t n = strlen(who) + strlen(text) + 4;
    message = xmalloc(n);
    snprintf(message, n, "%s: %s", who, text);
  }
  f.tag = status == EDDY_INVALID     ? EDDY_PLUGIN_0_2_0_TYPES_FAILURE_INVALID
          : status == EDDY_RETRYABLE ? EDDY_PLUGIN_0_2_0_TYPES_FAILURE_RETRYABLE
                                     : EDDY_PLUGIN_0_2_0_TYPES_FAILURE_FATAL;
  wit_string s = give(message, strlen(message));
  if (f.tag == EDDY_PLUGIN_0_2_0_TYPES_FAILURE_INVALID)
    f.val.invalid = s;
  else if (f.tag == EDDY_PLUGIN_0_2_0_TYPES_FAILURE_RETRYABLE)
    f.val.retryable = s;
  else
    f.val.fatal = s;
  return f;
}

/* Moves the pending records into the contract's list. */
static void take_emits(eddy_out *out, wit_emit **ptr, size_t *len) {
  *len = out->len;
  *ptr = out->len ? xmalloc(out->len * sizeof(wit_emit)) : NULL;
  for (size_t i = 0; i < out->len; i++) {
    pending_emit *p = &out->emits[i];
    wit_emit *e = &(*ptr)[i];
    memset(e, 0, sizeof *e);
    e->topic = give(p->topic, strlen(p->topic));
    e->key.is_some = p->key != NULL;
    if (p->key) e->key.val = give(p->key, strlen(p->key));
    e->value = give(p->value, p->value_len);
  }
  free(out->emits);
  out->emits = NULL;
  out->len = out->cap = 0;
}

#ifdef EDDY_AGGREGATOR

EXPORTS(state_format_t)
EXPORTS(setup)(EXPORTS(settings_t) * settings) {
  (void)settings;
  return EXPORTS_EDDY_PLUGIN_0_2_0_AGGREGATOR_STATE_FORMAT_JSON;
}

/* Folds one key's events; fills `result`. */
static void fold_key(const EXPORTS(key_events_t) * k, EXPORTS(result_outcome_failure_t) * result) {
  char *key = cstr(&k->key);
  current_key = key;
  eddy_out out = {0};
  eddy_status status = EDDY_OK;
  eddy_json *state = NULL;
  if (k->state.is_some) {
    char error[160];
    state = eddy_parse((const char *)k->state.val.ptr, k->state.val.len, error, sizeof error);
    if (!state)
      status = eddy_fail(&out, EDDY_INVALID, "stored state of key \"%s\" does not decode: %s", key,
                         error);
  } else {
    state = eddy_init(key);
    if (!state) status = eddy_fail(&out, EDDY_FATAL, "eddy_init(\"%s\") returned no state", key);
  }
  for (size_t i = 0; status == EDDY_OK && i < k->events.len; i++)
    status = process(&k->events.ptr[i], state, &out);
  if (status == EDDY_OK) {
    size_t len;
    char *text = eddy_write(state, &len);
    result->is_err = false;
    result->val.ok.state = (wit_bytes){(uint8_t *)text, len};
    take_emits(&out, &result->val.ok.emits.ptr, &result->val.ok.emits.len);
  } else {
    result->is_err = true;
    result->val.err = failure_of(status, &out, "eddy_apply");
  }
  eddy_free(state);
  out_clear(&out);
  current_key = NULL;
  free(key);
}

void EXPORTS(fold)(EXPORTS(list_key_events_t) * batch, EXPORTS(list_result_outcome_failure_t) * ret) {
  ret->len = batch->len;
  ret->ptr = batch->len ? xmalloc(batch->len * sizeof *ret->ptr) : NULL;
  for (size_t i = 0; i < batch->len; i++) fold_key(&batch->ptr[i], &ret->ptr[i]);
  EXPORTS(list_key_events_free)(batch);
}

#else

void EXPORTS(handle)(EXPORTS(list_event_t) * events, EXPORTS(list_result_list_emit_failure_t) * ret) {
  ret->len = events->len;
  ret->ptr = events->len ? xmalloc(events->len * sizeof *ret->ptr) : NULL;
  for (size_t i = 0; i < events->len; i++) {
    const wit_event *e = &events->ptr[i];
    char *key = e->key.is_some ? cstr(&e->key.val) : NULL;
    current_key = key;
    eddy_out out = {0};
    eddy_status status = process(e, NULL, &out);
    if (status == EDDY_OK) {
      ret->ptr[i].is_err = false;
      take_emits(&out, &ret->ptr[i].val.ok.ptr, &ret->ptr[i].val.ok.len);
    } else {
      ret->ptr[i].is_err = true;
      ret->ptr[i].val.err = failure_of(status, &out, "eddy_handle");
    }
    out_clear(&out);
    current_key = NULL;
    free(key);
  }
  EXPORTS(list_event_free)(events);
}

#endif

#else

/* Natively (the SDK's tests), log lines go to stderr. */
void eddy_log(eddy_level level, const char *format, ...) {
  static const char *names[] = {"trace", "debug", "info", "warn", "error"};
  va_list args;
  va_start(args, format);
  char *text = vformat(format, args);
  va_end(args);
  fprintf(stderr, "[%s] %s\n", (unsigned)level < 5 ? names[level] : "log", text);
  free(text);
}

#endif
