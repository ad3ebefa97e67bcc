// Regenerates src/gen/ from ../protos, or with --check verifies that src/gen/ is what the
// protos and the pinned plugin produce now (exit 1 when stale). Runs buf and protoc-gen-es
// from node_modules, so it works offline once `npm ci` has run.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const bin = join(root, "node_modules", ".bin");
const check = process.argv.includes("--check");

if (!existsSync(join(bin, "buf")) || !existsSync(join(bin, "protoc-gen-es"))) {
  console.error("client-ts: buf / protoc-gen-es missing; run `npm ci` in client-ts first");
  process.exit(2);
}

/** Runs `buf generate`, writing src/gen/ under `outBase` (the package root by default). */
function generate(outBase) {
  const args = ["generate", "--template", "buf.gen.yaml"];
  if (outBase) args.push("--output", outBase);
  const run = spawnSync(join(bin, "buf"), args, {
    cwd: root,
    stdio: "inherit",
    // buf finds the `local: protoc-gen-es` plugin on PATH.
    env: { ...process.env, PATH: `${bin}${delimiter}${process.env.PATH ?? ""}` },
  });
  if (run.status !== 0) {
    console.error(`client-ts: buf generate failed (${run.error ?? `exit ${run.status}`})`);
    process.exit(2);
  }
}

/** Every file under `dir`, as paths relative to it, sorted. */
function files(dir) {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath ?? e.path, e.name)))
    .sort();
}

if (!check) {
  generate();
  process.exit(0);
}

const tmp = mkdtempSync(join(tmpdir(), "mic2e-client-ts-gen-"));
try {
  generate(tmp);
  const fresh = join(tmp, "src", "gen");
  const committed = join(root, "src", "gen");
  const want = files(fresh);
  const have = files(committed);
  const stale = [
    ...want.filter((f) => !have.includes(f)).map((f) => `missing: src/gen/${f}`),
    ...have.filter((f) => !want.includes(f)).map((f) => `extra:   src/gen/${f}`),
    ...want
      .filter((f) => have.includes(f))
      .filter((f) => !readFileSync(join(fresh, f)).equals(readFileSync(join(committed, f))))
      .map((f) => `differs: src/gen/${f}`),
  ];
  if (stale.length > 0) {
    console.error("client-ts: src/gen is stale; run `npm run generate` in client-ts:");
    for (const line of stale) console.error(`  ${line}`);
    process.exit(1);
  }
  console.log(`client-ts: src/gen is fresh (${want.length} files)`);
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
