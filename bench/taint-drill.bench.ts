/**
 * The taint drill (issue 17, "Measured"): a server in this process; agents in
 * a child process (`support/taint-drill-child.ts`: the real sync loop, cache
 * and server client of each agent, over real mTLS) holding
 * AGENTS × SVIDS_PER_AGENT X509-SVIDs for AGENTS × WORKLOADS simulated
 * workload streams (selector sets read from each agent's cache). The active
 * X.509 authority is tainted (`CaManager.taint`, what
 * `sigil-server authority taint` calls), and the drill measures:
 *
 * - the time until no workload holds an SVID under the tainted key
 *   (absolute target < 60 s), with the raw signing time of as many SVIDs in
 *   this run for information;
 * - workload-visible errors: checks in which a workload lacked an SVID for
 *   one of its entries (absolute target 0);
 * - the server's CPU time during the drill (this process: the server alone)
 *   as a ratio of the CPU time of raw signing of as many SVIDs (`issueLeaf`
 *   under a P-256 CA, no issuance log) in the same run. Target < 10: the
 *   server also generates nothing but does verify, record, log and answer.
 *
 * SIGIL_BENCH_AGENTS (default 100), SIGIL_BENCH_SVIDS_PER_AGENT (default 100),
 * SIGIL_BENCH_WORKLOADS_PER_AGENT (default 10), SIGIL_BENCH_TAINT_SPREAD_MS
 * (the agents' `taint_replacement_spread`, default 10000).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseSelector } from "../common/selector.js";
import { parseServerConfig } from "../server/config/load.js";
import { startServer } from "../server/main.js";
import { testServerConfigYaml } from "../test/integration/support/server-process.js";
import { parseSpiffeId, parseTrustDomain } from "../spiffe/id.js";
import { encodePemCertificates } from "../spiffe/pem.js";
import { generateKeyPair, generateSigner } from "../spiffe/signer.js";
import { createRootCa } from "../spiffe/x509/ca.js";
import { issueLeaf, prepareLeafTemplate } from "../spiffe/x509/leaf.js";
import { randomSerial } from "../spiffe/x509/serial.js";
import { report } from "./harness.js";

const here = path.dirname(fileURLToPath(import.meta.url));
const AGENTS = Number(process.env.SIGIL_BENCH_AGENTS ?? 100);
const SVIDS_PER_AGENT = Number(process.env.SIGIL_BENCH_SVIDS_PER_AGENT ?? 100);
const WORKLOADS = Number(process.env.SIGIL_BENCH_WORKLOADS_PER_AGENT ?? 10);
const SPREAD_MS = Number(process.env.SIGIL_BENCH_TAINT_SPREAD_MS ?? 10_000);
const SVIDS = AGENTS * SVIDS_PER_AGENT;
const cpuMs = (u: NodeJS.CpuUsage): number => (u.user + u.system) / 1000;

/** CPU and wall time of signing `n` X509-SVIDs raw: one CA, keys made beforehand, no log. */
function rawSigning(n: number): { cpuMs: number; wallMs: number } {
  const td = parseTrustDomain("example.org");
  const signer = generateSigner("ec-p256");
  const caDer = createRootCa({ trustDomain: td, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 86_400_000), signer });
  const template = prepareLeafTemplate({ issuerCertDer: caDer, issuerSigner: signer });
  const key = new Uint8Array(generateKeyPair("ec-p256").publicKey.export({ format: "der", type: "spki" }));
  const id = parseSpiffeId("spiffe://example.org/raw");
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < n; i++) issueLeaf(template, { spiffeId: id, subjectPublicKeyDer: key, serial: randomSerial(), notBefore: new Date(), notAfter: new Date(Date.now() + 3_600_000) });
  return { cpuMs: cpuMs(process.cpuUsage(cpu0)), wallMs: performance.now() - t0 };
}

const dir = mkdtempSync(path.join(tmpdir(), "sigil-bench-taint-"));
const server = await startServer(parseServerConfig(testServerConfigYaml(dir, { keyManager: "memory", serverExtra: "  audit_log_enabled: false\n  ratelimit:\n    attestation: false\n    signing: false\n    sync: false\n" })), {
  logDestination: { write: () => undefined },
});
let child: ChildProcess | undefined;
try {
  const tokens: string[] = [];
  for (let i = 0; i < AGENTS; i++) {
    const token = `drill-${i}-${Math.random().toString(36).slice(2)}`;
    await server.datastore.createJoinToken({ token, expiresAt: new Date(Date.now() + 3_600_000) });
    tokens.push(token);
    const parentId = `spiffe://example.org/spire/agent/join_token/${token}`;
    const made = await server.datastore.createEntries(
      Array.from({ length: SVIDS_PER_AGENT }, (_, k) => ({ spiffeId: `spiffe://example.org/drill/${i}/e${k}`, parentId, selectors: [parseSelector(`unix:uid:${1000 + (k % WORKLOADS)}`)] })),
    );
    const failed = made.find((r) => !r.ok);
    if (failed) throw new Error(`bench: entries of agent ${i} not created: ${JSON.stringify(failed)}`);
  }
  const rootsPath = path.join(dir, "roots.pem");
  writeFileSync(rootsPath, encodePemCertificates(server.ca.bundle().x509Authorities));
  const tokensPath = path.join(dir, "tokens.txt");
  writeFileSync(tokensPath, tokens.join("\n"));

  const c = spawn(process.execPath, ["--import", "tsx", path.join(here, "support", "taint-drill-child.ts"), server.agentApiAddress, rootsPath, tokensPath, String(WORKLOADS), String(SPREAD_MS), String(SVIDS_PER_AGENT)], { stdio: ["pipe", "pipe", "inherit"] });
  child = c;
  const lines: Record<string, unknown>[] = [];
  let waiter: (() => void) | undefined;
  createInterface({ input: c.stdout! }).on("line", (l) => {
    lines.push(JSON.parse(l) as Record<string, unknown>);
    waiter?.();
  });
  const next = async <T>(key: string): Promise<T> => {
    for (;;) {
      const found = lines.find((l) => key in l);
      if (found) return found[key] as T;
      if (c.exitCode !== null) throw new Error(`bench: the agents' process exited (${c.exitCode}) before answering ${key}`);
      await new Promise<void>((r) => {
        waiter = r;
        setTimeout(r, 1000);
      });
    }
  };
  const ready = await next<{ agents: number; svids: number }>("ready");
  console.log(`agents ready: ${ready.agents} agents, ${ready.svids} SVIDs, ${ready.agents * WORKLOADS} workload streams; spread ${SPREAD_MS} ms`);

  const raw = rawSigning(SVIDS);
  console.log(`raw signing of ${SVIDS} X509-SVIDs: ${raw.cpuMs.toFixed(0)} ms CPU, ${raw.wallMs.toFixed(0)} ms wall`);

  const active = (await server.ca.list()).find((a) => a.kind === "x509" && a.status === "active");
  if (!active) throw new Error("bench: no active X.509 authority");
  c.stdin!.write(`drill ${active.spkiSha256}\n`);
  const cpu0 = process.cpuUsage();
  const taint = await server.ca.taint("x509", active.keyId);
  console.log(`tainted ${taint.tainted.keyId}; ${taint.activated ? `activated ${taint.activated.keyId}` : "no successor activated"}${taint.preparedFirst ? " (prepared first)" : ""}`);
  const drained = await next<{ ms: number; errors: number; agentsCpuMs: number }>("drained");
  const serverCpu = cpuMs(process.cpuUsage(cpu0));
  console.log(`drained in ${drained.ms.toFixed(0)} ms; workload-visible errors ${drained.errors}; server CPU ${serverCpu.toFixed(0)} ms; the agents' process CPU ${drained.agentsCpuMs.toFixed(0)} ms`);
  console.log("note: the machine is shared and busy; these figures are indicative only");

  report({
    name: `taint-drill-drain-${SVIDS}-svids-${AGENTS}-agents`,
    value: drained.ms,
    unit: "ms",
    baseline: { value: raw.wallMs, unit: "ms", what: `raw signing of ${SVIDS} X509-SVIDs, wall` },
    target: { kind: "absolute", op: "<", bound: 60_000 },
  });
  report({ name: "taint-drill-workload-visible-errors", value: drained.errors, unit: "errors", target: { kind: "absolute", op: "<=", bound: 0 } });
  report({
    name: "taint-drill-server-cpu",
    value: serverCpu,
    unit: "ms CPU",
    baseline: { value: raw.cpuMs, unit: "ms CPU", what: `raw signing of ${SVIDS} X509-SVIDs` },
    target: { kind: "ratio", op: "<", bound: 10 },
  });
  c.stdin!.write("quit\n");
  await new Promise((r) => (c.exitCode !== null ? r(undefined) : c.once("exit", r)));
} finally {
  if (child && child.exitCode === null) {
    const c = child;
    await new Promise((r) => {
      c.once("exit", r);
      c.kill("SIGKILL");
    });
  }
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}
