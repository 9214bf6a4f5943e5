/**
 * `sigil-server x509 mint --write <dir>` run by root against a real server
 * process, into a directory another user prepared (a name guessed in /tmp,
 * say): the CLI must neither write the minted private key into a file that
 * user owns nor follow a symbolic link that user planted (root would
 * overwrite any file on the host), and nothing is minted.
 *
 * Needs root (another uid owns the directory); CI runs as root.
 */
import { chmodSync, chownSync, lchownSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServerProcess, type ServerProcess } from "./support/server-process.js";

const isRoot = process.geteuid?.() === 0;
if (!isRoot) {
  if (process.env.CI === "true") throw new Error("x509-mint-write needs root to give a directory to another uid; CI runs as root");
  console.warn("SKIP: x509-mint-write needs root to give a directory to another uid; skipped on this machine");
}

const OTHER = { uid: 4501, gid: 4501 };
let srv: ServerProcess;
let dir: string;

beforeAll(async () => {
  if (!isRoot) return;
  srv = await startServerProcess();
  dir = mkdtempSync(path.join(tmpdir(), "sigil-mint-write-"));
  chmodSync(dir, 0o755);
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  if (srv) rmSync(srv.dir, { recursive: true, force: true });
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const issuances = (): number => (JSON.parse(srv.cli(["issuance", "list", "--output", "json"]).stdout) as { issuances: unknown[] }).issuances.length;

describe("x509 mint --write into a directory another user controls", () => {
  it.skipIf(!isRoot)("exits 1 naming the directory and its owner; the planted file and the link's target are untouched, nothing is minted", () => {
    // The other user's directory: svid.key a file of theirs, svid.pem a link to a file of root's.
    const out = path.join(dir, "out");
    mkdirSync(out, { mode: 0o755 });
    chownSync(out, OTHER.uid, OTHER.gid);
    const planted = path.join(out, "svid.key");
    writeFileSync(planted, "", { mode: 0o666 });
    chownSync(planted, OTHER.uid, OTHER.gid);
    const victim = path.join(dir, "victim");
    writeFileSync(victim, "root's file\n", { mode: 0o644 });
    symlinkSync(victim, path.join(out, "svid.pem"));
    lchownSync(path.join(out, "svid.pem"), OTHER.uid, OTHER.gid);
    const before = issuances();

    const r = srv.cli(["x509", "mint", "--spiffe-id", "spiffe://example.org/minted-elsewhere", "--write", out]);

    expect(r.status, r.stdout).toBe(1);
    expect(r.stderr).toContain(`refusing to use directory ${out}: it is owned by uid ${OTHER.uid}`);
    expect(readFileSync(planted, "utf8")).toBe("");
    expect(lstatSync(planted).uid).toBe(OTHER.uid);
    expect(readFileSync(victim, "utf8")).toBe("root's file\n");
    expect(issuances()).toBe(before);
  });

  it.skipIf(!isRoot)("a directory of root's own still gets svid.pem, svid.key (0600) and bundle.pem", () => {
    const out = path.join(dir, "mine");
    const r = srv.cli(["x509", "mint", "--spiffe-id", "spiffe://example.org/minted-here", "--write", out]);
    expect(r.status, r.stderr).toBe(0);
    expect(readFileSync(path.join(out, "svid.pem"), "utf8")).toContain("BEGIN CERTIFICATE");
    expect(readFileSync(path.join(out, "bundle.pem"), "utf8")).toContain("BEGIN CERTIFICATE");
    expect(lstatSync(path.join(out, "svid.key")).mode & 0o777).toBe(0o600);
    expect(lstatSync(out).mode & 0o777).toBe(0o700);
  });
});
