/**
 * Tool gating for tests that need an external program (openssl, swtpm, psql…).
 * On a developer's laptop a missing tool skips the test with a printed reason;
 * under CI=true a missing tool is a failure, never a silent skip.
 */
import { spawnSync } from "node:child_process";

const cache = new Map<string, boolean>();

/** True when `cmd` runs (exit status 0 for `cmd ...args`). */
export function toolAvailable(cmd: string, args: string[] = ["version"]): boolean {
  const key = `${cmd} ${args.join(" ")}`;
  let ok = cache.get(key);
  if (ok === undefined) {
    const r = spawnSync(cmd, args, { stdio: "ignore" });
    ok = r.status === 0;
    cache.set(key, ok);
  }
  return ok;
}

/**
 * Returns true when the tool is present. When it is absent: under CI throws (the
 * test fails), otherwise prints why and returns false so the caller can skip.
 *
 * @example
 * ```ts
 * const haveOpenssl = requireTool("openssl");
 * describe.skipIf(!haveOpenssl)("openssl interop", () => { … });
 * ```
 */
export function requireTool(cmd: string, args: string[] = ["version"], why = ""): boolean {
  if (toolAvailable(cmd, args)) return true;
  const reason = `${cmd} is not available${why ? ` (${why})` : ""}`;
  if (process.env.CI === "true") {
    throw new Error(`${reason}: under CI=true a missing tool is a failure; .ci/run installs it`);
  }
  console.warn(`SKIP: ${reason}; these tests are skipped on this machine`);
  return false;
}

/**
 * Like {@link requireTool} for a condition with its own reason: `problem`
 * undefined means available (true). Otherwise under CI throws, else prints
 * why and returns false so the caller can skip.
 */
export function requireCondition(problem: string | undefined, why: string): boolean {
  if (problem === undefined) return true;
  const reason = `${problem} (${why})`;
  if (process.env.CI === "true") throw new Error(`${reason}: under CI=true a missing tool is a failure`);
  console.warn(`SKIP: ${reason}; these tests are skipped on this machine`);
  return false;
}
