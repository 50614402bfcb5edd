// Routes AsyncProcess aggregates whose state is REJECTED to `rejected-process`.
import { defineHandler, Invalid } from "eddy-sdk";

export const handler = defineHandler({
  handle(event, out) {
    const p = event.value;
    if (p === null || typeof p !== "object" || typeof p.id !== "string") throw new Invalid("not an AsyncProcess");
    if (p.state === "REJECTED") out.emit("rejected-process", p.id, p);
  },
});
