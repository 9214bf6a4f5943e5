/**
 * Rate limits of the agent API against a real `sigil-server run` process with
 * low limits: floods of node attestations (per source address) and JWT-SVID
 * requests (per agent) are refused with ResourceExhausted and a retry hint,
 * other agents keep getting their SVIDs, the issuance log holds only what the
 * limits admitted, and a batch naming one entry twice is refused outright.
 *
 * Bounds are checked against the time the test measured around each flood,
 * never against fixed timings.
 */
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { credentials, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RETRY_PUSHBACK_METADATA_KEY, retryAfterMsOf } from "../../common/rpc/status.js";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin, SvidAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";
import { attestWithJoinToken, rootsPemFromBundleJson, type Attested } from "./support/test-agent.js";

const ATTESTATION_BURST = 3;
const JWT_PER_SECOND = 3;
/** Entries of the agent that asks for a batch larger than its X.509 bucket (1 per second). */
const BIG_BATCH = 10;

let dir: string;
let srv: ServerProcess;
let roots: string;
let admin: {
  agent: ReturnType<typeof createUnaryClient<(typeof AgentAdmin)["method"]>>;
  entry: ReturnType<typeof createUnaryClient<(typeof EntryAdmin)["method"]>>;
  svid: ReturnType<typeof createUnaryClient<(typeof SvidAdmin)["method"]>>;
};
/** Floods JWT requests and asks for a batch larger than its bucket. */
let noisy: Attested;
let noisyEntries: string[];
/** Minds its own business while the others are throttled. */
let quiet: Attested;
let quietEntry: string;

const spki = (): { case: "publicKey"; value: Uint8Array } => ({
  case: "publicKey",
  value: new Uint8Array(generateKeyPairSync("ec", { namedCurve: "prime256v1" }).publicKey.export({ format: "der", type: "spki" })),
});

async function outcome<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; err: ServiceError }> {
  try {
    return { ok: true, value: await p };
  } catch (e) {
    return { ok: false, err: e as ServiceError };
  }
}

async function newAgent(name: string, entries: number): Promise<{ agent: Attested; entryIds: string[] }> {
  const tok = await admin.agent.createJoinToken({ ttl: 600 });
  const created = await admin.entry.batchCreateEntry({
    entries: Array.from({ length: entries }, (_, i) => create(EntrySchema, { spiffeId: `spiffe://example.org/${name}/w${i}`, parentId: tok.agentId, selectors: [{ type: "unix", value: `uid:${1000 + i}` }] })),
  });
  const entryIds = created.results.map((r) => r.entry?.id ?? "");
  expect(entryIds.every((id) => id !== "")).toBe(true);
  return { agent: await attestWithJoinToken(srv.agentApiAddress, roots, tok.token), entryIds };
}

async function issuedTo(agentId: string, kind: string): Promise<number> {
  const res = await admin.svid.listIssuances({ byAgentId: agentId, pageSize: 1000 });
  return res.issuances.filter((i) => i.kind === kind).length;
}

async function throttledCount(limit: string): Promise<number> {
  const started = await srv.waitForLog((l) => l.msg === "server started");
  const text = await (await fetch(`${String(started.health)}/metrics`)).text();
  return Number(new RegExp(`^sigil_rate_limited_requests_total\\{limit="${limit}"\\} (\\d+)$`, "m").exec(text)?.[1] ?? 0);
}

/** Every refusal is ResourceExhausted whose message ends with the hint, and the trailer carries the same number. */
function expectRetryHint(err: ServiceError, message: RegExp, maxMs: number): void {
  expect(err.code, err.details).toBe(status.RESOURCE_EXHAUSTED);
  expect(err.details).toMatch(message);
  const inText = Number(/; retry after (\d+)ms$/.exec(err.details)?.[1]);
  expect(err.metadata.get(RETRY_PUSHBACK_METADATA_KEY)).toEqual([String(inText)]);
  expect(inText).toBeGreaterThan(0);
  expect(inText).toBeLessThanOrEqual(maxMs);
}

beforeAll(async () => {
  dir = mkdtempSync(path.join(tmpdir(), "sigil-rate-limits-"));
  const configPath = path.join(dir, "server.yaml");
  writeFileSync(
    configPath,
    testServerConfigYaml(dir, {
      serverExtra: `  log_level: debug
  ratelimit:
    attestation_per_second: 1
    attestation_burst: ${ATTESTATION_BURST}
    x509_signing_per_second: 1
    jwt_signing_per_second: ${JWT_PER_SECOND}
`,
      extraYaml: "health_checks:\n  listener_enabled: true\n  bind_port: 0\n",
    }),
  );
  srv = await launchServerProcess(dir, configPath, path.join(dir, "admin", "api.sock"));
  const target = `unix:${srv.socketPath}`;
  const creds = credentials.createInsecure();
  admin = { agent: createUnaryClient(AgentAdmin, target, creds), entry: createUnaryClient(EntryAdmin, target, creds), svid: createUnaryClient(SvidAdmin, target, creds) };
  const show = srv.cli(["bundle", "show", "--output", "json"]);
  expect(show.status, show.stderr).toBe(0);
  roots = rootsPemFromBundleJson(show.stdout);
  ({ agent: noisy, entryIds: noisyEntries } = await newAgent("noisy", BIG_BATCH));
  const q = await newAgent("quiet", 1);
  quiet = q.agent;
  quietEntry = q.entryIds[0] as string;
}, 60_000);

afterAll(async () => {
  noisy?.api.close();
  quiet?.api.close();
  for (const c of Object.values(admin ?? {})) c.close();
  await srv?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe("agent API rate limits", () => {
  it("a flood of node attestations from one address is refused with a retry hint, while an attested agent still gets its SVIDs", async () => {
    const flood = 30;
    const start = performance.now();
    const [attempts, quietX509, quietJwt] = await Promise.all([
      Promise.all(Array.from({ length: flood }, (_, i) => outcome(attestWithJoinToken(srv.agentApiAddress, roots, `no-such-token-${i}`)))),
      quiet.api.batchNewX509SVID({ params: [{ entryId: quietEntry, key: spki() }] }),
      quiet.api.newJWTSVID({ entryId: quietEntry, audience: ["db"] }),
    ]);
    const elapsedS = (performance.now() - start) / 1000;
    const errors = attempts.map((a) => (a.ok ? undefined : a.err));
    expect(errors.every((e) => e !== undefined)).toBe(true);
    const exhausted = errors.filter((e) => e?.code === status.RESOURCE_EXHAUSTED) as ServiceError[];
    const admitted = errors.filter((e) => e?.code === status.PERMISSION_DENIED);
    expect(exhausted.length + admitted.length).toBe(flood);
    // A full bucket, plus one attempt per second of the flood.
    expect(admitted.length).toBeLessThanOrEqual(ATTESTATION_BURST + Math.ceil(elapsedS));
    expect(exhausted.length).toBeGreaterThan(0);
    for (const e of exhausted) expectRetryHint(e, /^attest: rate limit: more than 1 node attestation attempt per second from 127\.0\.0\.1; retry after \d+ms$/, 1000);
    expect(await throttledCount("attestation")).toBe(exhausted.length);
    // The agent already attested is limited per agent, not per address: served at once.
    expect(quietX509.results[0]?.status?.code).toBe(status.OK);
    expect(quietX509.results[0]?.svid?.spiffeId).toBe("spiffe://example.org/quiet/w0");
    expect(quietJwt.token).not.toBe("");
  });

  it("a refused attestation consumes nothing: honouring the retry hint, the node attests with the same join token", async () => {
    const tok = await admin.agent.createJoinToken({ ttl: 600 });
    let refusals = 0;
    let attested: Attested | undefined;
    while (!attested) {
      const r = await outcome(attestWithJoinToken(srv.agentApiAddress, roots, tok.token));
      if (r.ok) attested = r.value;
      else {
        expect(r.err.code, r.err.details).toBe(status.RESOURCE_EXHAUSTED);
        expect(++refusals).toBeLessThan(10);
        await delay(retryAfterMsOf(r.err) ?? 1000);
      }
    }
    attested.api.close();
    expect(attested.spiffeId).toBe(tok.agentId);
  });

  it("a flood of JWT-SVID requests from one agent is refused with a retry hint; the log records only the admitted ones; another agent is still served", async () => {
    const before = await issuedTo(noisy.spiffeId, "jwt-svid");
    const flood = 20;
    const start = performance.now();
    const results = await Promise.all(Array.from({ length: flood }, () => outcome(noisy.api.newJWTSVID({ entryId: noisyEntries[0] as string, audience: ["db"] }))));
    const elapsedS = (performance.now() - start) / 1000;
    const signed = results.filter((r) => r.ok).length;
    const exhausted = results.flatMap((r) => (r.ok ? [] : [r.err]));
    expect(signed + exhausted.length).toBe(flood);
    expect(signed).toBeGreaterThan(0);
    expect(signed).toBeLessThanOrEqual(JWT_PER_SECOND + Math.ceil(elapsedS * JWT_PER_SECOND));
    for (const e of exhausted) {
      expectRetryHint(e, new RegExp(`^new jwt svid: rate limit: agent ${noisy.spiffeId} asked for more than ${JWT_PER_SECOND} JWT-SVIDs per second; retry after \\d+ms$`), 1000);
    }
    expect(await throttledCount("jwt_signing")).toBe(exhausted.length);
    expect(await issuedTo(noisy.spiffeId, "jwt-svid")).toBe(before + signed);
    const other = await quiet.api.newJWTSVID({ entryId: quietEntry, audience: ["db"] });
    expect(other.spiffeId).toBe("spiffe://example.org/quiet/w0");
  });

  it("a batch larger than the agent's X.509 bucket is signed once, then the agent waits until the rate catches up", async () => {
    const first = await noisy.api.batchNewX509SVID({ params: noisyEntries.map((entryId) => ({ entryId, key: spki() })) });
    expect(first.results.map((r) => r.status?.code)).toEqual(noisyEntries.map(() => status.OK));
    const second = await outcome(noisy.api.batchNewX509SVID({ params: [{ entryId: noisyEntries[0] as string, key: spki() }] }));
    expect(second.ok).toBe(false);
    const err = (second as { err: ServiceError }).err;
    expectRetryHint(err, /^batch new x509 svid: rate limit: agent .* asked for more than 1 X509-SVIDs per second; retry after \d+ms$/, BIG_BATCH * 1000);
    // The debt of the big batch, not just one token's second.
    expect(retryAfterMsOf(err)).toBeGreaterThan(1000);
    expect(await issuedTo(noisy.spiffeId, "x509-svid")).toBe(BIG_BATCH);
  });

  it("a batch naming the same entry twice is INVALID_ARGUMENT and nothing is signed or recorded", async () => {
    const list = (): { kind: string }[] => {
      const r = srv.cli(["issuance", "list", "--agent-id", quiet.spiffeId, "--output", "json"]);
      expect(r.status, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { issuances: { kind: string }[] }).issuances;
    };
    const before = list();
    const res = await outcome(quiet.api.batchNewX509SVID({ params: [{ entryId: quietEntry, key: spki() }, { entryId: quietEntry, key: spki() }] }));
    expect(res.ok).toBe(false);
    const err = (res as { err: ServiceError }).err;
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toBe(`batch new x509 svid: params[1] names entry ${JSON.stringify(quietEntry)} again (first at params[0]); ask for each entry once`);
    expect(list()).toEqual(before);
  });
});
