/**
 * Temporary directories that a test makes and that are removed when it
 * finishes, passed or failed, so no test leaves anything in the temp dir.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { onTestFinished } from "vitest";

/**
 * Makes `<tmp>/<prefix>XXXXXX` and removes it, with everything in it, once the
 * running test has finished (after its `afterEach` hooks). Call it from a test
 * body or a function the test calls.
 */
export function testTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}
