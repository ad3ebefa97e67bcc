// Builds the playground page into dist/playground/: index.html, playground.css and one
// bundle, playground.js (playground/src/main.ts with connect-web, the generated code and
// everything they import, for browsers of the last few years). Nothing is loaded from
// elsewhere at run time. Type-checking is `tsc -p playground/tsconfig.json` (the npm
// script build:playground runs both); this step only bundles, in well under a second.
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const root = fileURLToPath(new URL("..", import.meta.url));
const source = join(root, "playground");
const out = join(root, "dist", "playground");

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(source, "src", "main.ts")],
  outfile: join(out, "playground.js"),
  bundle: true,
  format: "esm",
  platform: "browser",
  // The page needs OffscreenCanvas (masks) anyway: these versions have it.
  target: ["chrome109", "firefox115", "safari16.4"],
  minify: true,
  // The dependencies' licence notices stay with their code, at the end of the bundle.
  legalComments: "eof",
  logLevel: "warning",
});
for (const file of ["index.html", "playground.css"]) copyFileSync(join(source, file), join(out, file));
console.log(`client-ts: playground built in ${out}`);
