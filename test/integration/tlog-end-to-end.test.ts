/**
 * End to end with the transparency log on: a real server, a real agent
 * attested with a join token, and a workload (another uid) that fetches its
 * X509-SVID over the Workload API. The SVID's serial has an `x509-svid` log
 * entry naming the workload's SPIFFE ID, entry and agent, holding the very
 * certificate the workload got, and an inclusion proof against the server's
 * signed checkpoint verifies with the recorded log key. The agent's own
 * SVID is logged with the SHA-256 of the join token it attested with.
 *
 * Pick-up time: after the agent's next sync, the log holds a `delivered`
 * entry for that SVID (and for the JWT-SVID the workload fetched) referencing
 * its issuance entry; the SVID of a second entry, which no workload fetched,
 * is logged as issued and has no `delivered` entry.
 *
 * Needs root (the workload runs as another uid); CI runs as root.
 */
import { createHash, X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { credentials } from "@grpc/grpc-js";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { openCheckpoint } from "../../spiffe/tlog/checkpoint.js";
import { leafHash } from "../../spiffe/tlog/hash.js";
import { MemoryTlog } from "../../spiffe/tlog/memory-log.js";
import { generateNoteKey, parseVerifierKey } from "../../spiffe/tlog/note.js";
import { verifyInclusion } from "../../spiffe/tlog/proof.js";
import { decodeLogEntry, type LogCredentialEntry } from "../../spiffe/tlog/sigil-entry.js";
import { TileReader } from "../../spiffe/tlog/tiles.js";
import { canonicalSerialHex } from "../../spiffe/x509/serial.js";
import { runWorkload, startAgentProcess, type AgentProcess } from "./support/agent-process.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";
import { rootsPemFromBundleJson } from "./support/test-agent.js";

const isRoot = process.getuid?.() === 0;
if (!isRoot) {
  if (process.env.CI === "true") throw new Error("tlog-end-to-end runs a workload as another uid and needs root (CI runs as root)");
  console.warn("SKIP: tlog-end-to-end runs a workload as another uid and needs root");
}
const WEB = { uid: 4331, gid: 4331 };
/** An entry whose SVID the agent holds but no workload ever asks for. */
const IDLE_UID = 4332;
const dir = mkdtempSync(path.join(tmpdir(), "sigil-tlog-e2e-"));
let srv: ServerProcess | undefined;
let agent: AgentProcess | undefined;

afterAll(async () => {
  await agent?.stop();
  await srv?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!isRoot)("transparency log end to end", () => {
  it("a workload's X509-SVID is in the log, proven against a signed checkpoint, and its pick-up is logged after the next sync", async () => {
    const configPath = path.join(dir, "server.yaml");
    writeFileSync(configPath, testServerConfigYaml(dir, { extraYaml: "transparency_log:\n  enabled: true\n  checkpoint_interval: 200ms\n" }));
    srv = await launchServerProcess(dir, configPath, path.join(dir, "admin", "api.sock"));
    const target = `unix:${srv.socketPath}`;
    const agentAdmin = createUnaryClient(AgentAdmin, target, credentials.createInsecure());
    const entryAdmin = createUnaryClient(EntryAdmin, target, credentials.createInsecure());
    const tok = await agentAdmin.createJoinToken({ ttl: 600 });
    const created = await entryAdmin.batchCreateEntry({
      entries: [
        create(EntrySchema, { spiffeId: "spiffe://example.org/web", parentId: tok.agentId, selectors: [{ type: "unix", value: `uid:${WEB.uid}` }] }),
        create(EntrySchema, { spiffeId: "spiffe://example.org/idle", parentId: tok.agentId, selectors: [{ type: "unix", value: `uid:${IDLE_UID}` }] }),
      ],
    });
    agentAdmin.close();
    entryAdmin.close();
    const entryId = created.results[0]?.entry?.id ?? "";
    const idleEntryId = created.results[1]?.entry?.id ?? "";
    agent = await startAgentProcess({ serverAddress: srv.agentApiAddress, bundlePem: rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout), joinToken: tok.token });

    const r = await runWorkload(agent.socketPath, `const ctx = await client.fetchX509Context(); const jwt = await client.fetchJwtSvid({ audience: "db" }); console.log(JSON.stringify({ der: Buffer.from(ctx.defaultSvid.leaf.raw).toString("base64"), jwt: jwt.token }));`, WEB, 30_000);
    const { der, jwt } = JSON.parse(r.stdout.trim().split("\n").pop() ?? "{}") as { der?: string; jwt?: string };
    expect(der, r.stdout + r.stderr).toBeDefined();
    const serial = canonicalSerialHex(new X509Certificate(Buffer.from(der ?? "", "base64")).serialNumber);

    const dbPath = path.join(dir, "datastore.sqlite3");
    const db = new Database(dbPath, { readonly: true });
    try {
      const row = db.prepare("SELECT idx, entry FROM tlog_entries WHERE lookup_key = ?").get(`serial:${serial}`) as { idx: number; entry: Buffer } | undefined;
      expect(row, `no log entry for serial ${serial}`).toBeDefined();
      const e = decodeLogEntry(row?.entry ?? Buffer.alloc(0));
      expect(e).toMatchObject({ kind: "x509-svid", serial, spiffeId: "spiffe://example.org/web", entryId, agentId: tok.agentId, selectors: [`unix:uid:${WEB.uid}`], cert: der });
      // The agent's own SVID, issued at attestation, carries the digest of the evidence it presented (the join token).
      const attested = (db.prepare("SELECT entry FROM tlog_entries ORDER BY idx").all() as { entry: Buffer }[]).map((x) => decodeLogEntry(x.entry)).filter((x) => x.kind === "agent-svid");
      expect(attested).toHaveLength(1);
      expect(attested[0]).toMatchObject({ spiffeId: tok.agentId, requestedBy: "attestation:join_token", evidenceSha256: createHash("sha256").update(tok.token, "utf8").digest("hex") });

      // Covered by a checkpoint (one is signed within the interval), proven from the stored entries.
      let cp: { tree_size: number; note: string } | undefined;
      for (let i = 0; i < 100 && !(cp && cp.tree_size > (row?.idx ?? 0)); i++) {
        await delay(100);
        cp = db.prepare("SELECT tree_size, note FROM tlog_checkpoints ORDER BY tree_size DESC LIMIT 1").get() as typeof cp;
      }
      const size = cp?.tree_size ?? 0;
      expect(size).toBeGreaterThan(row?.idx ?? 0);
      const vkeys = (db.prepare("SELECT vkey FROM tlog_keys").all() as { vkey: string }[]).map((k) => parseVerifierKey(k.vkey));
      const checkpoint = openCheckpoint(cp?.note ?? "", vkeys).checkpoint;
      const mirror = new MemoryTlog(checkpoint.origin, [generateNoteKey("mirror").signer]);
      for (const x of db.prepare("SELECT entry FROM tlog_entries WHERE idx < ? ORDER BY idx").all(size) as { entry: Buffer }[]) mirror.append(x.entry);
      mirror.publish();
      const proof = await new TileReader(mirror.fetch, size).inclusionProof(row?.idx ?? 0);
      verifyInclusion(row?.idx ?? 0, size, leafHash(row?.entry ?? Buffer.alloc(0)), proof, checkpoint.rootHash);

      // Pick-up: the agent reports both deliveries with its next sync (every 500 ms here).
      const jwtSha256 = createHash("sha256").update(jwt ?? "").digest("hex");
      const jwtRow = db.prepare("SELECT idx FROM tlog_entries WHERE lookup_key = ?").get(`jwt:${jwtSha256}`) as { idx: number } | undefined;
      expect(jwtRow, "no log entry for the JWT-SVID").toBeDefined();
      const delivered = (key: string) => {
        const d = db.prepare("SELECT entry FROM tlog_entries WHERE lookup_key = ?").all(key) as { entry: Buffer }[];
        return d.map((x) => decodeLogEntry(x.entry));
      };
      for (let i = 0; i < 300 && (delivered(`delivered:${serial}`).length === 0 || delivered(`delivered:jwt:${jwtSha256}`).length === 0); i++) await delay(100);
      const x509Delivery = delivered(`delivered:${serial}`);
      expect(x509Delivery).toEqual([{ v: 1, kind: "delivered", serial, spiffeId: "spiffe://example.org/web", agentId: tok.agentId, deliveredAt: expect.any(Number), issuanceIndex: row?.idx }]);
      const issuedAt = (e as { issuedAt: number }).issuedAt;
      expect((x509Delivery[0] as { deliveredAt: number }).deliveredAt).toBeGreaterThanOrEqual(issuedAt);
      expect((x509Delivery[0] as { deliveredAt: number }).deliveredAt).toBeLessThanOrEqual(Math.ceil(Date.now() / 1000));
      expect(delivered(`delivered:jwt:${jwtSha256}`)).toEqual([expect.objectContaining({ kind: "delivered", jwtSha256, spiffeId: "spiffe://example.org/web", agentId: tok.agentId, issuanceIndex: jwtRow?.idx })]);

      // The idle entry's SVID was issued to the agent and logged, but never picked up.
      const idle = (db.prepare("SELECT entry FROM tlog_entries WHERE lookup_key LIKE 'serial:%'").all() as { entry: Buffer }[])
        .map((x) => decodeLogEntry(x.entry))
        .filter((x): x is LogCredentialEntry => x.kind === "x509-svid" && x.entryId === idleEntryId);
      expect(idle.length).toBeGreaterThan(0);
      for (const x of idle) expect(delivered(`delivered:${x.serial ?? ""}`)).toEqual([]);
      // The two deliveries are the only ones logged.
      expect((db.prepare("SELECT COUNT(*) AS n FROM tlog_entries WHERE lookup_key LIKE 'delivered:%'").get() as { n: number }).n).toBe(2);

      // The inventory of the CA key shows which live SVIDs were never picked up.
      const inv = JSON.parse(srv.cli(["inventory", "--key-id", (e as LogCredentialEntry).authorityKeyId ?? "", "--output", "json"]).stdout) as { svids: { serial: string; pickup: string; delivered_at: string }[] };
      expect(inv.svids.find((x) => x.serial === serial)).toMatchObject({ pickup: "picked-up", delivered_at: String((x509Delivery[0] as { deliveredAt: number }).deliveredAt * 1000) });
      const idleSerials = new Set(idle.map((x) => x.serial));
      const idleListed = inv.svids.filter((x) => idleSerials.has(x.serial));
      expect(idleListed.length).toBeGreaterThan(0);
      for (const x of idleListed) expect(x.pickup).toBe("never-picked-up");
    } finally {
      db.close();
    }
  }, 120_000);
});
