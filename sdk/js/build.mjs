// Builds a JavaScript Eddy plugin into a WebAssembly component:
//   node build.mjs <plugin.js> <wit dir> <world> <out.wasm>
// The plugin and the SDK ("eddy-sdk") are bundled into one module with
// esbuild, then componentized with componentize-js with no WASI features
// beyond what the engine itself needs.
import { build } from "esbuild";
import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile, mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const [entry, witPath, worldName, out] = process.argv.slice(2);
if (!out) {
  console.error("usage: node build.mjs <plugin.js> <wit dir> <world> <out.wasm>");
  process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const dir = await mkdtemp(join(tmpdir(), "eddy-js-"));
const bundled = join(dir, "plugin.bundle.js");
await build({
  entryPoints: [entry],
  bundle: true,
  format: "esm",
  platform: "neutral",
  outfile: bundled,
  external: ["eddy:plugin/*", "wasi:*"],
  alias: { "eddy-sdk": join(here, "index.js") },
  logLevel: "warning",
});
const { component } = await componentize({
  sourcePath: bundled,
  witPath,
  worldName,
  disableFeatures: ["http", "fetch-event"],
});
await writeFile(out, component);
