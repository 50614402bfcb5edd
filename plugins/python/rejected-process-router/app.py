"""Routes AsyncProcess aggregates whose state is REJECTED to `rejected-process`."""

import eddy_sdk


class RejectedProcessRouter:
    def handle(self, event, out):
        process = event.value
        if not isinstance(process, dict) or not isinstance(process.get("id"), str):
            raise eddy_sdk.Invalid("not an AsyncProcess")
        if process.get("state") == "REJECTED":
            out.emit("rejected-process", process["id"], process)


Handler = eddy_sdk.handler(RejectedProcessRouter)
