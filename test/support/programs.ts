/**
 * How tests start Sigil's own programs: plain `node` on the compiled `dist/`
 * (what the container image and `npm ci` ship), not the TypeScript source
 * through tsx. A process then starts in about 0.4 s instead of 1–2 s, and the
 * suite starts several hundred of them.
 *
 * `dist/` is never stale when a test runs: `npm ci` builds it, and the suite's
 * global setup ({@link ensureFreshBuild}, run by vitest.config.ts) rebuilds it
 * when any compiled source is newer than its output.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** The compiled file of `source` (relative to the root, e.g. `server/cli/main.ts`). */
export function compiled(source: string): string {
  if (!source.endsWith(".ts")) throw new Error(`compiled: ${source} is not a .ts source`);
  return path.join(ROOT, "dist", `${source.slice(0, -".ts".length)}.js`);
}

/** `sigil-server`'s entry: the node arguments before the CLI's own. */
export const SERVER_MAIN = compiled("server/cli/main.ts");
/** `sigil-agent`'s entry. */
export const AGENT_MAIN = compiled("agent/cli/main.ts");
/** The Workload API client module, for workload scripts run with `node --input-type=module -e`. */
export const WORKLOAD_CLIENT = compiled("spiffe/workloadapi/client.ts");

/** The folders tsconfig.build.json compiles. */
const SOURCE_DIRS = ["proto/gen", "spiffe", "common", "server", "agent", "plugins"];

/** The first source newer than its compiled file (or without one), if any. */
export function staleSource(): string | undefined {
  const walk = (dir: string): string | undefined => {
    for (const e of readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = path.join(dir, e.name);
      if (e.isDirectory()) {
        const s = walk(rel);
        if (s !== undefined) return s;
      } else if (e.name.endsWith(".ts") && !e.name.endsWith(".d.ts") && !e.name.endsWith(".test.ts")) {
        const out = compiled(rel);
        if (!existsSync(out) || statSync(out).mtimeMs < statSync(path.join(ROOT, rel)).mtimeMs) return rel;
      }
    }
    return undefined;
  };
  for (const d of SOURCE_DIRS) {
    if (!existsSync(path.join(ROOT, d))) return d;
    const s = walk(d);
    if (s !== undefined) return s;
  }
  return undefined;
}

/** Rebuilds `dist/` (`tsc -p tsconfig.build.json`) when a source changed since the last build. */
export function ensureFreshBuild(): void {
  if (!existsSync(path.join(ROOT, "proto/gen")) || newestMtime("proto", (rel) => rel.endsWith(".proto") && !rel.startsWith("proto/gen")) > newestMtime("proto/gen", () => true)) {
    console.log("tests: a .proto is newer than proto/gen; regenerating (npm run gen)");
    run("npm", ["run", "gen"]);
  }
  const stale = staleSource();
  if (stale === undefined) return;
  console.log(`tests: ${stale} is newer than dist/; rebuilding (tsc -p tsconfig.build.json)`);
  run(path.join(ROOT, "node_modules/.bin/tsc"), ["-p", "tsconfig.build.json"]);
}

/** The newest modification time of the files under `dir` that `keep` accepts (0 when none). */
function newestMtime(dir: string, keep: (rel: string) => boolean): number {
  let newest = 0;
  for (const e of readdirSync(path.join(ROOT, dir), { withFileTypes: true, recursive: true })) {
    const rel = path.relative(ROOT, path.join(e.parentPath, e.name));
    if (e.isFile() && keep(rel)) newest = Math.max(newest, statSync(path.join(ROOT, rel)).mtimeMs);
  }
  return newest;
}

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: "inherit" });
  if (r.status !== 0) throw new Error(`tests: ${cmd} ${args.join(" ")} failed (exit ${r.status}); the programs under test cannot be built`);
}
