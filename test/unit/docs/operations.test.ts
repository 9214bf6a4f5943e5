/**
 * docs/operations.md lists every metric the server and agent export, so the
 * operator's reference cannot fall behind the code.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = path.join(dir, name);
    if (statSync(p).isDirectory()) return name === "gen" ? [] : sources(p);
    return p.endsWith(".ts") ? [p] : [];
  });
}

describe("docs/operations.md", () => {
  it("names every sigil_* metric defined in the code", () => {
    const names = new Set<string>();
    for (const dir of ["server", "agent", "common", "plugins"]) {
      for (const file of sources(path.join(root, dir))) {
        for (const m of readFileSync(file, "utf8").matchAll(/name: "(sigil_[a-z0-9_]+)"/g)) names.add(m[1] as string);
      }
    }
    expect(names.size).toBeGreaterThanOrEqual(13);
    const doc = readFileSync(path.join(root, "docs/operations.md"), "utf8");
    const missing = [...names].filter((n) => !doc.includes(`\`${n}`));
    expect(missing).toEqual([]);
  });
});
