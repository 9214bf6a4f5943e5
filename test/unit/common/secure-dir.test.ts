/**
 * Directories for sockets and key files: what Sigil creates, and which
 * existing directories it refuses (and how it says so).
 *
 * The ownership cases need root to chown to another uid (CI runs as root).
 */
import { chmodSync, chownSync, existsSync, lchownSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { checkSecureDirectory, ensureSecureDirectory } from "../../../common/secure-dir.js";
import { isSigilError } from "../../../spiffe/errors.js";

const isRoot = process.geteuid?.() === 0;
if (!isRoot) {
  if (process.env.CI === "true") throw new Error("secure-dir ownership tests need root to chown to another uid; CI runs as root");
  console.warn("SKIP: secure-dir ownership tests need root to chown to another uid; skipped on this machine");
}

const uid = process.geteuid?.() ?? 0;
const OTHER_UID = 4501;
const root = mkdtempSync(path.join(tmpdir(), "sigil-secure-dir-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const fresh = (): string => mkdtempSync(path.join(root, `d${n++}-`));

function refusal(fn: () => void): Error {
  try {
    fn();
  } catch (e) {
    expect(isSigilError(e, "ERR_PERMISSION_DENIED"), String(e)).toBe(true);
    return e as Error;
  }
  throw new Error("expected the directory to be refused");
}

describe("ensureSecureDirectory", () => {
  it.each([0o755, 0o700])("creates missing directories with mode %o, owned by the process user", (mode) => {
    const base = fresh();
    const dir = path.join(base, "a", "b");
    ensureSecureDirectory(dir, mode, "test");
    for (const d of [path.join(base, "a"), dir]) {
      const st = statSync(d);
      expect(st.mode & 0o7777).toBe(mode);
      expect(st.uid).toBe(uid);
    }
    // Idempotent on what it created.
    ensureSecureDirectory(dir, mode, "test");
  });

  it("does not change the mode of a directory that exists", () => {
    const dir = fresh();
    chmodSync(dir, 0o750);
    ensureSecureDirectory(dir, 0o700, "test");
    expect(statSync(dir).mode & 0o7777).toBe(0o750);
  });
});

describe("checkSecureDirectory", () => {
  it.each([0o700, 0o750, 0o755, 0o711])("accepts a directory of the process user with mode %o", (mode) => {
    const dir = fresh();
    chmodSync(dir, mode);
    expect(() => checkSecureDirectory(dir, "test")).not.toThrow();
  });

  it.each([
    [0o777, "0777"],
    [0o775, "0775"],
    [0o757, "0757"],
    [0o1777, "1777"],
  ])("refuses a directory with mode %o, naming it, its owner and its mode", (mode, shown) => {
    const dir = fresh();
    chmodSync(dir, mode);
    expect(refusal(() => ensureSecureDirectory(dir, 0o755, "workload endpoint")).message).toBe(
      `workload endpoint: refusing to use directory ${dir}: it is owned by uid ${uid} with mode ${shown}; it must be owned by uid ${uid} (the user this process runs as) and not writable by group or others`,
    );
  });

  it("refuses a directory below one that others may write to, and accepts one below a sticky directory like /tmp", () => {
    const parent = fresh();
    const dir = path.join(parent, "public");
    mkdirSync(dir, { mode: 0o755 });
    chmodSync(parent, 0o777);
    expect(refusal(() => checkSecureDirectory(dir, "test")).message).toMatch(
      new RegExp(`^test: refusing to use directory ${dir}: ${parent} above it is owned by uid ${uid} with mode 0777; every directory above it must be owned by root or uid ${uid}`),
    );
    chmodSync(parent, 0o1777);
    expect(() => checkSecureDirectory(dir, "test")).not.toThrow();
    chmodSync(parent, 0o700);
  });

  it("checks where a symbolic link leads: a link to a world-writable directory is refused, naming the path as configured", () => {
    const base = fresh();
    const target = path.join(base, "target");
    mkdirSync(target);
    chmodSync(target, 0o777);
    const link = path.join(base, "link");
    symlinkSync(target, link);
    expect(refusal(() => checkSecureDirectory(link, "test")).message).toMatch(new RegExp(`^test: refusing to use directory ${link}: it is owned by uid ${uid} with mode 0777`));
  });

  it("refuses something that is not a directory", () => {
    const file = path.join(fresh(), "file");
    writeFileSync(file, "");
    expect(refusal(() => checkSecureDirectory(file, "test")).message).toBe(`test: refusing to use directory ${file}: it is not a directory`);
  });
});

describe.skipIf(!isRoot)("directories of other users (needs root)", () => {
  it("refuses a directory another uid owns, even with mode 0755", () => {
    const dir = fresh();
    chmodSync(dir, 0o755);
    chownSync(dir, OTHER_UID, OTHER_UID);
    expect(refusal(() => ensureSecureDirectory(dir, 0o755, "admin api")).message).toBe(
      `admin api: refusing to use directory ${dir}: it is owned by uid ${OTHER_UID} with mode 0755; it must be owned by uid 0 (the user this process runs as) and not writable by group or others`,
    );
  });

  it("refuses a directory below one another uid owns, and a symbolic link on the way that another uid owns", () => {
    const parent = fresh();
    const dir = path.join(parent, "sock");
    mkdirSync(dir, { mode: 0o700 });
    chownSync(parent, OTHER_UID, OTHER_UID);
    expect(refusal(() => checkSecureDirectory(dir, "test")).message).toMatch(new RegExp(`${parent} above it is owned by uid ${OTHER_UID} with mode 0700`));
    chownSync(parent, 0, 0);

    const link = path.join(fresh(), "link");
    symlinkSync(parent, link);
    lchownSync(link, OTHER_UID, OTHER_UID);
    expect(refusal(() => checkSecureDirectory(path.join(link, "sock"), "test")).message).toMatch(
      new RegExp(`${link}, a symbolic link on the way, is owned by uid ${OTHER_UID}; every symbolic link on the way must be owned by root or uid 0`),
    );
  });

  /** A sticky, world-writable directory like /tmp, and a safe directory of ours elsewhere. */
  function stickyAndSafe(): { sticky: string; safe: string } {
    const sticky = fresh();
    chmodSync(sticky, 0o1777);
    const safe = fresh();
    chmodSync(safe, 0o755);
    return { sticky, safe };
  }

  it("refuses a directory that is itself a symbolic link another uid planted in a sticky directory, though it leads somewhere safe", () => {
    // The link's owner can point it elsewhere at any time, e.g. at a directory serving a fake socket.
    const { sticky, safe } = stickyAndSafe();
    const link = path.join(sticky, "sigil");
    symlinkSync(safe, link);
    lchownSync(link, OTHER_UID, OTHER_UID);
    expect(refusal(() => checkSecureDirectory(link, "workload endpoint")).message).toBe(
      `workload endpoint: refusing to use directory ${link}: ${link}, a symbolic link on the way, is owned by uid ${OTHER_UID}; every symbolic link on the way must be owned by root or uid 0`,
    );
  });

  it("refuses a chain of links that passes through a link another uid owns", () => {
    const { sticky, safe } = stickyAndSafe();
    const planted = path.join(sticky, "planted");
    symlinkSync(safe, planted);
    lchownSync(planted, OTHER_UID, OTHER_UID);
    const ours = path.join(fresh(), "ours");
    symlinkSync(planted, ours);
    expect(refusal(() => checkSecureDirectory(ours, "test")).message).toMatch(new RegExp(`${planted}, a symbolic link on the way, is owned by uid ${OTHER_UID}`));
  });

  it("creates nothing through a link another uid owns", () => {
    const { sticky, safe } = stickyAndSafe();
    const link = path.join(sticky, "sigil-agent");
    symlinkSync(safe, link);
    lchownSync(link, OTHER_UID, OTHER_UID);
    refusal(() => ensureSecureDirectory(path.join(link, "public"), 0o755, "test"));
    expect(existsSync(path.join(safe, "public"))).toBe(false);
  });
});
