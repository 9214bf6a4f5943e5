/**
 * `sigil-server log verify|prove|checkpoint` as an auditor and an operator
 * run them: verify against a log served over HTTP by the tiles listener (a
 * MemoryTlog-backed view), with a saved checkpoint, a trust bundle and an
 * allow list; a log altered in storage (an entry rewritten, deleted,
 * inserted) fails naming the first bad index; a checkpoint signed by another
 * key is refused; a fork is reported. `prove` and `checkpoint` go through
 * LogAdmin on a Unix socket.
 */
import { createHash } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { credentials, Server, ServerCredentials, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { createLogger } from "../../../../common/log.js";
import { createUnaryClient } from "../../../../common/rpc/unary-client.js";
import type { PublicHttpListener } from "../../../../common/public-http-listener.js";
import { LogAdmin } from "../../../../proto/gen/sigil/admin/v1/admin_pb.js";
import { createLogAdmin } from "../../../../server/api/admin/log.js";
import { createUnaryWrapper } from "../../../../server/api/unary.js";
import { main } from "../../../../server/cli/main.js";
import { startTlogListener } from "../../../../server/tlog/http.js";
import { grpcServiceDefinition } from "../../../../spiffe/grpc/service.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { toPem } from "../../../../spiffe/pem.js";
import { generateSigner, type Signer } from "../../../../spiffe/signer.js";
import { signCheckpoint } from "../../../../spiffe/tlog/checkpoint.js";
import { MemoryTlog } from "../../../../spiffe/tlog/memory-log.js";
import { generateCosigner } from "../../../../spiffe/tlog/cosignature.js";
import { generateNoteKey, parseNote } from "../../../../spiffe/tlog/note.js";
import { canonicalJson } from "../../../../spiffe/tlog/sigil-entry.js";
import { decodeEntryBundle, encodeEntryBundle } from "../../../../spiffe/tlog/tiles.js";
import { createRootCa } from "../../../../spiffe/x509/ca.js";
import { issueLeaf, prepareLeafTemplate } from "../../../../spiffe/x509/leaf.js";
import { memoryTlogView, type MemoryTlogView } from "../../../support/tlog-view.js";

const log = createLogger({ level: "error", destination: { write: () => undefined } });
const td = parseTrustDomain("example.org");
const T0 = Math.floor(Date.UTC(2026, 0, 1) / 1000);

interface Pki {
  readonly rootDer: Uint8Array;
  readonly signer: Signer;
}
function pki(): Pki {
  const signer = generateSigner("ec-p256");
  const rootDer = createRootCa({ trustDomain: td, notBefore: new Date((T0 - 3600) * 1000), notAfter: new Date((T0 + 365 * 86400) * 1000), signer });
  return { rootDer, signer };
}
const ours = pki();
const foreign = pki();

/** A logged workload X509-SVID issued by `ca` at T0 + i seconds. */
function svidEntry(i: number, ca: Pki = ours, spiffeId = `spiffe://example.org/w/${i % 7}`): Record<string, unknown> {
  const template = prepareLeafTemplate({ issuerCertDer: ca.rootDer, issuerSigner: ca.signer });
  const serial = BigInt(1000 + i);
  const der = issueLeaf(template, {
    spiffeId: parseSpiffeId(spiffeId),
    subjectPublicKeyDer: generateSigner("ec-p256").publicKey.export({ type: "spki", format: "der" }),
    serial,
    notBefore: new Date((T0 + i) * 1000),
    notAfter: new Date((T0 + i + 3600) * 1000),
  });
  return { v: 1, kind: "x509-svid", serial: serial.toString(16), spiffeId, notBefore: T0 + i, notAfter: T0 + i + 3600, issuedAt: T0 + i, cert: Buffer.from(der).toString("base64") };
}

// Certificates cost milliseconds each: one set, reused.
const ENTRIES = Array.from({ length: 300 }, (_, i) => svidEntry(i));

let dir: string;
let listener: PublicHttpListener | undefined;
beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), "sigil-log-cli-"));
  writeFileSync(path.join(dir, "bundle.pem"), toPem("CERTIFICATE", ours.rootDer));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(async () => {
  await listener?.close();
  listener = undefined;
});

async function serve(view: MemoryTlogView): Promise<string> {
  listener = await startTlogListener({ host: "127.0.0.1", port: 0, view, log });
  return listener.url;
}

/** Runs the CLI in this process; returns its exit status and output. */
async function cli(args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const out = vi.spyOn(process.stdout, "write").mockImplementation((s: string | Uint8Array) => ((stdout += String(s)), true));
  const err = vi.spyOn(process.stderr, "write").mockImplementation((s: string | Uint8Array) => ((stderr += String(s)), true));
  try {
    const status = await main(args);
    return { status, stdout, stderr };
  } finally {
    out.mockRestore();
    err.mockRestore();
  }
}

function logOf(entries: readonly Record<string, unknown>[]): MemoryTlogView {
  const view = memoryTlogView();
  view.appendAndPublish(entries);
  return view;
}

/** Rewrites the entries of a published bundle in storage, as an attacker with database access would. */
function tamper(view: MemoryTlogView, bundlePath: string, change: (entries: Uint8Array[]) => void): void {
  const entries = decodeEntryBundle(view.log.files.get(bundlePath) as Uint8Array);
  change(entries);
  view.log.files.set(bundlePath, encodeEntryBundle(entries));
}

describe("sigil-server log verify", () => {
  it("verifies an intact log with certificates checked, saves the checkpoint and checks the next run extends it", async () => {
    const view = logOf(ENTRIES);
    const url = await serve(view);
    const since = path.join(dir, "since-ok");
    const first = await cli(["log", "verify", "--url", url, "--key", view.vkey, "--since", since, "--bundle", path.join(dir, "bundle.pem")]);
    expect(first.status, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/Entries checked\s+: 300/);
    expect(first.stdout).toMatch(/Reported entries\s+: 0/);
    expect(readFileSync(since, "utf8")).toBe(view.latestCheckpoint()?.note);

    view.appendAndPublish([svidEntry(300)]);
    const second = await cli(["log", "verify", "--url", url, "--key", view.vkey, "--since", since, "--bundle", path.join(dir, "bundle.pem"), "--output", "json"]);
    expect(second.status, second.stderr).toBe(0);
    const doc = JSON.parse(second.stdout) as { size: number; extends: { size: number }; findings_total: number };
    expect(doc).toMatchObject({ size: 301, extends: { size: 300 }, findings_total: 0 });
    expect(readFileSync(since, "utf8")).toBe(view.latestCheckpoint()?.note);
  });

  it.each([
    ["rewritten", (e: Uint8Array[]) => void (e[7] = Buffer.from(canonicalJson({ ...ENTRIES[7], spiffeId: "spiffe://example.org/evil" })))],
    ["deleted", (e: Uint8Array[]) => void e.splice(7, 1)],
    ["inserted", (e: Uint8Array[]) => void e.splice(7, 0, Buffer.from(canonicalJson(svidEntry(7))))],
  ])("an entry %s in storage fails verification naming the first bad index", async (_what, change) => {
    const view = logOf(ENTRIES);
    tamper(view, "tile/entries/001.p/44", (e) => change(e));
    const url = await serve(view);
    const r = await cli(["log", "verify", "--url", url, "--key", view.vkey, "--no-progress"]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^error: log verify: entry 263: /m);
  });

  it("saves the --since checkpoint through an exclusive, unguessable temporary file", async () => {
    const view = logOf(ENTRIES.slice(0, 5));
    const url = await serve(view);
    const sub = mkdtempSync(path.join(dir, "since-excl-"));
    const since = path.join(sub, "since");
    // A name planted by another user where the old code wrote: it must not be written through.
    const victim = path.join(sub, "victim");
    writeFileSync(victim, "untouched");
    symlinkSync(victim, `${since}.tmp-${process.pid}`);
    const r = await cli(["log", "verify", "--url", url, "--key", view.vkey, "--since", since]);
    expect(r.status, r.stderr).toBe(0);
    expect(readFileSync(victim, "utf8")).toBe("untouched");
    expect(readFileSync(since, "utf8")).toBe(view.latestCheckpoint()?.note);
    expect(readdirSync(sub).sort()).toEqual(["since", `since.tmp-${process.pid}`, "victim"]);
  });

  it("refuses a checkpoint signed by another key than the one given", async () => {
    const view = logOf(ENTRIES.slice(0, 5));
    const url = await serve(view);
    const other = generateNoteKey(view.origin);
    const r = await cli(["log", "verify", "--url", url, "--key", other.vkey]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^error: .*(signature|signed|key)/im);
    expect((await cli(["log", "verify", "--url", url])).stderr).toMatch(/--key/);
  });

  it("counts no cosignature dated ahead of its clock or older than --witness-max-age, and refuses one witness key given twice", async () => {
    const view = logOf(ENTRIES.slice(0, 5));
    const w = generateCosigner("w.example/sigil/witness");
    const cp = view.latestCheckpoint() as { note: string; size: number; rootHash: Uint8Array };
    const text = parseNote(cp.note).text;
    let stamp = Math.floor(Date.now() / 1000);
    listener = await startTlogListener({ host: "127.0.0.1", port: 0, view: { ...view, latestCheckpoint: () => ({ ...cp, note: cp.note + w.cosign(text, stamp) }) }, log });
    const args = ["log", "verify", "--url", listener.url, "--key", view.vkey, "--no-progress", "--witness-key", w.vkey];
    const ok = await cli(args);
    expect(ok.status, ok.stderr).toBe(0);
    stamp += 3600;
    const ahead = await cli(args);
    expect([ahead.status, ahead.stderr]).toEqual([1, expect.stringMatching(/lacks witness cosignatures: .*w\.example\/sigil\/witness\+[0-9a-f]{8} \(timestamp in the future\)/)]);
    stamp -= 2 * 3600;
    expect((await cli(args)).status).toBe(0);
    const old = await cli([...args, "--witness-max-age", "30m"]);
    expect([old.status, old.stderr]).toEqual([1, expect.stringMatching(/\(cosignature too old\)/)]);
    const [name, id] = w.vkey.split("+") as [string, string];
    const upper = `${name}+${id.toUpperCase()}${w.vkey.slice(name.length + 1 + id.length)}`;
    const twice = await cli([...args, "--witness-key", upper, "--witness-quorum", "2"]);
    expect(twice.status).not.toBe(0);
    expect(twice.stderr).toContain(`--witness-key: witness key ${name}+${id} is listed twice`);
  });

  it("refuses a checkpoint whose origin is not the name of the log key that signed it", async () => {
    const view = logOf(ENTRIES.slice(0, 5));
    const cp = view.latestCheckpoint();
    if (cp === undefined) throw new Error("no checkpoint");
    // Signed by the log's own key (named example.org/sigil/issuance) but naming another log.
    const forged = signCheckpoint({ origin: "attacker.example/sigil/issuance", size: cp.size, rootHash: cp.rootHash, extensions: [] }, [view.signer]);
    const url = await serve({ ...view, latestCheckpoint: () => ({ ...cp, note: forged }) });
    const r = await cli(["log", "verify", "--url", url, "--key", view.vkey]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/checkpoint: origin "attacker\.example\/sigil\/issuance" is not the name of the trusted key that signed it \("example\.org\/sigil\/issuance"\)/);
  });

  it("reports a fork: a saved checkpoint of the same size with another root", async () => {
    const view = logOf(ENTRIES.slice(0, 20));
    const url = await serve(view);
    // The same key signs a second history of 20 entries: what a split view shows one auditor.
    const forked = new MemoryTlog(view.origin, [view.signer]);
    for (const e of ENTRIES.slice(20, 40)) forked.append(Buffer.from(canonicalJson(e)));
    const since = path.join(dir, "since-fork");
    writeFileSync(since, forked.publish());
    const r = await cli(["log", "verify", "--url", url, "--key", view.vkey, "--since", since]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/the log forked: two checkpoints of size 20 have different roots/);
  });

  it("reports, with its index, an SVID whose certificate does not chain to the bundle and an ID outside the allow list", async () => {
    const entries = [...ENTRIES.slice(0, 10), svidEntry(10, foreign), ...ENTRIES.slice(11, 20), svidEntry(20, ours, "spiffe://example.org/intruder")];
    const view = logOf(entries);
    const url = await serve(view);
    const allow = path.join(dir, "allow.txt");
    writeFileSync(allow, "# expected workloads\nspiffe://example.org/w/*\n");
    const r = await cli(["log", "verify", "--url", url, "--key", view.vkey, "--bundle", path.join(dir, "bundle.pem"), "--allow-ids", allow, "--output", "json"]);
    expect(r.status).toBe(1);
    const doc = JSON.parse(r.stdout) as { entries_checked: number; findings: { index: number; kind: string }[] };
    expect(doc.entries_checked).toBe(21);
    expect(doc.findings.map((f) => [f.index, f.kind])).toEqual([
      [10, "unchained"],
      [20, "not-allowed"],
    ]);
    expect(r.stderr).toMatch(/entry 10: x509-svid spiffe:\/\/example\.org\/w\/3 serial 3f2: the certificate does not chain to the trust bundle of example\.org/);
    expect(r.stderr).toMatch(/entry 20: x509-svid spiffe:\/\/example\.org\/intruder serial 3fc: ALERT/);
    expect(r.stderr).toMatch(/^error: log verify: the log is intact, but 2 entries were reported .* the first is entry 10$/m);
  });
});

describe("sigil-server log prove|checkpoint|rotate-key over LogAdmin", () => {
  async function adminSocket(view: MemoryTlogView | undefined): Promise<{ socket: string; close: () => Promise<void> }> {
    const socket = path.join(dir, `log-admin-${Math.random().toString(36).slice(2)}.sock`);
    const server = new Server();
    server.addService(grpcServiceDefinition(LogAdmin), createLogAdmin(view && (() => view), createUnaryWrapper({ log, auditEnabled: false, name: "admin api" })));
    await new Promise<void>((resolve, reject) => server.bindAsync(`unix:${socket}`, ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));
    return { socket, close: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())) };
  }

  it("proves a certificate's entry (checked against the signed checkpoint) and prints the checkpoint", async () => {
    const view = logOf(ENTRIES.slice(0, 40));
    const admin = await adminSocket(view);
    try {
      const certFile = path.join(dir, "svid.pem");
      writeFileSync(certFile, toPem("CERTIFICATE", Buffer.from(ENTRIES[33]?.cert as string, "base64")));
      const r = await cli(["log", "prove", "--cert", certFile, "-s", admin.socket, "--output", "json"]);
      expect(r.status, r.stderr).toBe(0);
      const doc = JSON.parse(r.stdout) as { index: number; entry: { serial: string }; proof: string[]; checkpoint: string; verified: boolean };
      expect(doc).toMatchObject({ index: 33, entry: { serial: (1033).toString(16) }, verified: true, checkpoint: view.latestCheckpoint()?.note });
      // Index 33 of 40: leaf 32, [34, 36), [36, 40), [0, 32).
      expect(doc.proof).toHaveLength(4);

      const pretty = await cli(["log", "prove", "--serial", "03F2", "-s", admin.socket]);
      expect(pretty.status, pretty.stderr).toBe(0);
      expect(pretty.stdout).toMatch(/Index\s+: 10\n/);

      const missing = await cli(["log", "prove", "--serial", "ffff", "-s", admin.socket]);
      expect(missing.status).toBe(1);
      expect(missing.stderr).toMatch(/no logged credential with serial ffff/);
      const bad = await cli(["log", "prove", "--serial", "xyz", "-s", admin.socket]);
      expect(bad.stderr).toMatch(/serial: must be a hex serial/);
      expect((await cli(["log", "prove", "-s", admin.socket])).status).toBe(2);

      const cp = await cli(["log", "checkpoint", "-s", admin.socket]);
      expect(cp.status, cp.stderr).toBe(0);
      expect(cp.stdout).toContain(view.vkey);
      expect(cp.stdout).toMatch(/Tree size\s+: 40/);

      const rotated = await cli(["log", "rotate-key", "-s", admin.socket, "--output", "json"]);
      expect(rotated.status, rotated.stderr).toBe(0);
      expect(JSON.parse(rotated.stdout)).toEqual({ verifier_key: view.rotations[0] });
      const keys = JSON.parse((await cli(["log", "checkpoint", "-s", admin.socket, "--output", "json"])).stdout) as { verifier_keys: string[] };
      expect(keys.verifier_keys).toEqual([view.vkey, view.rotations[0]]);
    } finally {
      await admin.close();
    }
  });

  it("refuses a certificate that reuses a logged serial but is not the logged certificate", async () => {
    const view = logOf(ENTRIES.slice(0, 40));
    const admin = await adminSocket(view);
    try {
      // Same serial as entry 33 (1000 + 33), another key and issuer.
      const rogue = path.join(dir, "rogue.pem");
      writeFileSync(rogue, toPem("CERTIFICATE", Buffer.from(svidEntry(33, foreign).cert as string, "base64")));
      const r = await cli(["log", "prove", "--cert", rogue, "-s", admin.socket]);
      expect(r.status).toBe(1);
      expect(r.stdout).not.toMatch(/Verified/);
      expect(r.stderr).toMatch(/log prove: NOT VERIFIED: the certificate logged with serial 409 is not the one given with --cert/);
    } finally {
      await admin.close();
    }
  });

  it("proves a JWT-SVID given by file, by hash or (with a warning) in argv", async () => {
    const token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy93In0.c2ln";
    const sha = createHash("sha256").update(token).digest("hex");
    const jwt = { v: 1, kind: "jwt-svid", jwtSha256: sha, spiffeId: "spiffe://example.org/w", notBefore: T0, notAfter: T0 + 60, issuedAt: T0, audience: ["x"] };
    const view = logOf([...ENTRIES.slice(0, 3), jwt]);
    const admin = await adminSocket(view);
    try {
      const file = path.join(dir, "token.jwt");
      writeFileSync(file, `${token}\n`, { mode: 0o600 });
      for (const args of [["--jwt-file", file], ["--jwt-sha256", sha.toUpperCase()]]) {
        const r = await cli(["log", "prove", ...args, "-s", admin.socket, "--output", "json"]);
        expect(r.status, r.stderr).toBe(0);
        expect(JSON.parse(r.stdout)).toMatchObject({ index: 3, entry: { kind: "jwt-svid", jwtSha256: sha }, verified: true });
        expect(r.stderr).toBe("");
      }
      const argv = await cli(["log", "prove", "--jwt", token, "-s", admin.socket, "--output", "json"]);
      expect(argv.status, argv.stderr).toBe(0);
      expect(argv.stderr).toMatch(/^warning: log prove: --jwt <token> puts a live bearer token in the command line/);
      expect((await cli(["log", "prove", "--jwt-sha256", "abc", "-s", admin.socket])).stderr).toMatch(/--jwt-sha256: must be 64 hex digits/);
      expect((await cli(["log", "prove", "--jwt-file", file, "--serial", "1", "-s", admin.socket])).status).toBe(2);
    } finally {
      await admin.close();
    }
  });

  it("answers INTERNAL naming the tile when a tile of an entry inside the checkpoint is missing from storage", async () => {
    const view = logOf(ENTRIES.slice(0, 40));
    view.log.files.delete("tile/0/000.p/40");
    const admin = await adminSocket(view);
    const client = createUnaryClient(LogAdmin, `unix:${admin.socket}`, credentials.createInsecure());
    try {
      const err = await client.prove({ lookup: { case: "serial", value: (1033).toString(16) } }).then(
        () => undefined,
        (e: ServiceError) => e,
      );
      expect(err?.code).toBe(status.INTERNAL);
      expect(err?.details).toMatch(/^log admin: proving the credential with serial 409: .*tile\/0\/000\.p\/40.*storage is inconsistent/);
      const r = await cli(["log", "prove", "--serial", "409", "-s", admin.socket]);
      expect(r.status).toBe(1);
      expect(r.stderr).toContain("tile/0/000.p/40");
      // An entry that is not logged is still NOT_FOUND.
      const missing = await client.prove({ lookup: { case: "serial", value: "ffff" } }).then(
        () => undefined,
        (e: ServiceError) => e,
      );
      expect(missing?.code).toBe(status.NOT_FOUND);
    } finally {
      client.close();
      await admin.close();
    }
  });

  it("says the log is not enabled when the server runs without it", async () => {
    const admin = await adminSocket(undefined);
    try {
      const r = await cli(["log", "checkpoint", "-s", admin.socket]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/log admin: the transparency log is not enabled \(transparency_log\.enabled/);
    } finally {
      await admin.close();
    }
  });
});
