/**
 * `npm run bench`: runs every benchmark in bench/ (files named *.bench.ts), or
 * those named on the command line, each in its own process so they do not
 * disturb each other. Exits 1 if any benchmark misses its target.
 */
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const dir = path.dirname(fileURLToPath(import.meta.url));
const wanted = process.argv.slice(2);
const files = readdirSync(dir)
  .filter((f) => f.endsWith(".bench.ts"))
  .filter((f) => wanted.length === 0 || wanted.some((w) => f.includes(w)))
  .sort();
let failed = 0;
for (const f of files) {
  console.log(`\n== ${f}`);
  const r = spawnSync(process.execPath, ["--import", "tsx", "--expose-gc", path.join(dir, f)], { stdio: ["ignore", "pipe", "inherit"], encoding: "utf8" });
  process.stdout.write(r.stdout);
  if (r.status !== 0 || /^FAIL /m.test(r.stdout)) failed++;
}
console.log(`\n${files.length - failed}/${files.length} benchmarks met their targets`);
process.exit(failed ? 1 : 0);
