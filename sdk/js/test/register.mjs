// Lets plugins under test import "eddy-sdk" by name, as the build bundles it.
import { register } from "node:module";

register(
  "data:text/javascript," +
    encodeURIComponent(`
      export async function resolve(specifier, context, next) {
        if (specifier === "eddy-sdk") return next(${JSON.stringify(new URL("../index.js", import.meta.url).href)}, context);
        return next(specifier, context);
      }`),
);
