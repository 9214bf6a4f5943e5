/**
 * Atomic private writes: nothing planted at the temporary name is written
 * through, and the directory must be safe.
 */
import { chmodSync, existsSync, lstatSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { writeFileAtomic } from "../../../common/atomic-file.js";
import { isSigilError } from "../../../spiffe/errors.js";

const root = mkdtempSync(path.join(tmpdir(), "sigil-atomic-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const freshDir = (): string => mkdtempSync(path.join(root, `d${n++}-`));

describe("writeFileAtomic", () => {
  it("refuses a symbolic link at the temporary name (to an existing file or dangling) and writes nothing through it", () => {
    const dir = freshDir();
    const victim = path.join(root, `victim-${n}`);
    writeFileSync(victim, "precious");
    const file = path.join(dir, "keys.json");
    writeFileSync(file, "old", { mode: 0o600 });
    symlinkSync(victim, path.join(dir, "planted"));
    expect(() => writeFileAtomic(file, "secret", 0o600, { tempName: () => "planted" })).toThrow(/^storage: cannot write .*keys\.json: .*EEXIST/);
    expect(readFileSync(victim, "utf8")).toBe("precious");
    expect(readFileSync(file, "utf8")).toBe("old");
    // The planted link is left for the operator to find, not removed.
    expect(lstatSync(path.join(dir, "planted")).isSymbolicLink()).toBe(true);

    const nowhere = path.join(root, `not-created-${n}`);
    symlinkSync(nowhere, path.join(dir, "dangling"));
    expect(() => writeFileAtomic(file, "secret", 0o600, { tempName: () => "dangling" })).toThrow(/EEXIST/);
    expect(existsSync(nowhere)).toBe(false);
  });

  it("refuses a directory writable by group or others, naming it with its owner and mode, and writes nothing", () => {
    const dir = freshDir();
    chmodSync(dir, 0o777);
    const file = path.join(dir, "keys.json");
    let caught: unknown;
    try {
      writeFileAtomic(file, "secret", 0o600, { subsystem: "keymanager(disk)" });
    } catch (e) {
      caught = e;
    }
    expect(isSigilError(caught, "ERR_PERMISSION_DENIED")).toBe(true);
    expect((caught as Error).message).toBe(
      `keymanager(disk): cannot write ${file}: refusing to use directory ${dir}: it is owned by uid ${process.geteuid?.()} with mode 0777; it must be owned by uid ${process.geteuid?.()} (the user this process runs as) and not writable by group or others`,
    );
    expect(readdirSync(dir)).toEqual([]);
  });
});
