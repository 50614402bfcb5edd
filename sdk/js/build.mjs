// Builds a JavaScript Eddy plugin into a WebAssembly component:
//   node build.mjs <plugin.js> <wit dir> <world> <out.wasm>
// The plugin and the SDK ("eddy-sdk") are bundled into one module with
// esbuild, then componentized with componentize-js with no WASI features
// beyond what the engine itself needs.
import { build } from "esbuild";
import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile, readFile, appendFile, mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, dirname, relative, resolve, basename } from "node:path";
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
  sourcemap: "external",
  sourcesContent: false,
});
// The source map rides in the bundle (appended: no bundle line moves), with
// paths relative to the plugin's directory, so a failure's stack names the
// plugin's own files and lines.
const map = JSON.parse(await readFile(`${bundled}.map`, "utf8"));
const pluginDir = dirname(resolve(entry));
map.sources = map.sources.map((s) => {
  const abs = resolve(dir, s);
  return abs === join(here, "index.js") ? "eddy-sdk/" + basename(abs) : relative(pluginDir, abs);
});
await appendFile(
  bundled,
  `\nglobalThis.__eddySourceMap = ${JSON.stringify({ sources: map.sources, mappings: map.mappings })};\n`,
);
const { component } = await componentize({
  sourcePath: bundled,
  witPath,
  worldName,
  disableFeatures: ["http", "fetch-event"],
});
await writeFile(out, component);
