// Lets plugins under test import "eddy-sdk" by name, as the build bundles it,
// and gives the SDK's wasi:cli/environment import the process's environment.
import { register } from "node:module";

register(
  "data:text/javascript," +
    encodeURIComponent(`
      export async function resolve(specifier, context, next) {
        if (specifier === "eddy-sdk") return next(${JSON.stringify(new URL("../index.js", import.meta.url).href)}, context);
        // In a component this is the host's; under Node, the process's environment.
        if (specifier.startsWith("wasi:cli/environment@")) {
          return { url: "data:text/javascript,export const getEnvironment = () => Object.entries(process.env);", shortCircuit: true };
        }
        return next(specifier, context);
      }`),
);
