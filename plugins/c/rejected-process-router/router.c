/* Routes AsyncProcess aggregates whose state is REJECTED to `rejected-process`. */
#include <string.h>

#include "eddy.h"

eddy_status eddy_handle(const eddy_event *event, eddy_out *out) {
  const eddy_json *process = event->value;
  const char *id = eddy_as_string(eddy_get(process, "id"), NULL);
  if (eddy_kind(process) != EDDY_JSON_OBJECT || !id)
    return eddy_fail(out, EDDY_INVALID, "not an AsyncProcess");
  const char *state = eddy_as_string(eddy_get(process, "state"), NULL);
  if (state && strcmp(state, "REJECTED") == 0) eddy_emit(out, "rejected-process", id, process);
  return EDDY_OK;
}
