/**
 * X509-SVID issuance over the agent API with the transparency log on, as a
 * ratio of the same issuance with it off, measured in the same run: two real
 * server processes (SQLite, issuance writer thread), identical but for
 * `transparency_log.enabled`, each with one attested agent asking for
 * batches of 100 SVIDs, 4 in flight. Passes alternate between the two so the
 * machine's drift falls on both. With the log on, every SVID's entry (leaf
 * certificate, digests, canonical JSON) is written in the records'
 * transaction and checkpoints are signed every second. Ratio target >= 0.9.
 */
import { generateKeyPairSync } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { create } from "@bufbuild/protobuf";
import { credentials } from "@grpc/grpc-js";
import { createUnaryClient } from "../common/rpc/unary-client.js";
import { AgentAdmin, EntryAdmin } from "../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema } from "../proto/gen/sigil/types/v1/types_pb.js";
import { attestWithJoinToken, rootsPemFromBundleJson, type Attested } from "../test/integration/support/test-agent.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "../test/integration/support/server-process.js";
import { median, report } from "./harness.js";

const BATCH = 100;
const IN_FLIGHT = 4;
const PASS_MS = 3000;

interface Rig {
  readonly srv: ServerProcess;
  readonly dir: string;
  readonly agent: Attested;
  readonly entryIds: string[];
}

async function rig(logOn: boolean): Promise<Rig> {
  const dir = mkdtempSync(path.join(tmpdir(), `sigil-bench-tlog-${logOn ? "on" : "off"}-`));
  const configPath = path.join(dir, "server.yaml");
  writeFileSync(
    configPath,
    testServerConfigYaml(dir, { serverExtra: "  log_level: info\n  ratelimit:\n    x509_signing_per_second: 1000000000\n", extraYaml: `transparency_log:\n  enabled: ${logOn}\n` }),
  );
  const srv = await launchServerProcess(dir, configPath, path.join(dir, "admin", "api.sock"));
  const target = `unix:${srv.socketPath}`;
  const entryAdmin = createUnaryClient(EntryAdmin, target, credentials.createInsecure());
  const agentAdmin = createUnaryClient(AgentAdmin, target, credentials.createInsecure());
  const tok = await agentAdmin.createJoinToken({ ttl: 600 });
  const created = await entryAdmin.batchCreateEntry({
    entries: Array.from({ length: BATCH }, (_, i) => create(EntrySchema, { spiffeId: `spiffe://example.org/bench/w${i}`, parentId: tok.agentId, selectors: [{ type: "unix", value: `uid:${1000 + i}` }] })),
  });
  entryAdmin.close();
  agentAdmin.close();
  const roots = rootsPemFromBundleJson(srv.cli(["bundle", "show", "--output", "json"]).stdout);
  return { srv, dir, agent: await attestWithJoinToken(srv.agentApiAddress, roots, tok.token), entryIds: created.results.map((r) => r.entry?.id ?? "") };
}

// Keys made up front: key generation is the agent's cost, not the server's.
const spkis = Array.from({ length: BATCH * IN_FLIGHT * 2 }, () => new Uint8Array(generateKeyPairSync("ec", { namedCurve: "prime256v1" }).publicKey.export({ format: "der", type: "spki" })));
let cursor = 0;

/**
 * CPU seconds (user + system, every thread) a process has used, from
 * /proc/<pid>/stat; undefined where there is no /proc. Unlike SVIDs per
 * second it hardly moves with other load on the machine.
 */
function cpuSeconds(pid: number | undefined, file = `/proc/${pid}/stat`): number | undefined {
  if (pid === undefined || !existsSync(file)) return undefined;
  // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
  const stat = readFileSync(file, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // USER_HZ is 100 on Linux
}

/** CPU seconds of a process's main thread (its event loop), from /proc/<pid>/task/<pid>/stat. */
const mainThreadSeconds = (pid: number | undefined): number | undefined => cpuSeconds(pid, `/proc/${pid}/task/${pid}/stat`);

/** Per rig: server CPU seconds (all threads, and the event loop's) and SVIDs signed over the measured passes. */
const cpu = new Map<Rig, { s: number; main: number; svids: number }>();

async function pass(r: Rig, ms: number, measured = true): Promise<number> {
  let signed = 0;
  const cpu0 = cpuSeconds(r.srv.child.pid);
  const main0 = mainThreadSeconds(r.srv.child.pid);
  const start = performance.now();
  const end = start + ms;
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      while (performance.now() < end) {
        const res = await r.agent.api.batchNewX509SVID({ params: r.entryIds.map((entryId) => ({ entryId, key: { case: "publicKey" as const, value: spkis[cursor++ % spkis.length] as Uint8Array } })) });
        for (const x of res.results) if (x.status?.code === 0) signed++;
      }
    }),
  );
  const cpu1 = cpuSeconds(r.srv.child.pid);
  const main1 = mainThreadSeconds(r.srv.child.pid);
  if (measured && cpu0 !== undefined && cpu1 !== undefined && main0 !== undefined && main1 !== undefined) {
    const acc = cpu.get(r) ?? { s: 0, main: 0, svids: 0 };
    cpu.set(r, { s: acc.s + cpu1 - cpu0, main: acc.main + main1 - main0, svids: acc.svids + signed });
  }
  return (signed * 1000) / (performance.now() - start);
}

const rigs: Rig[] = [];
try {
  const off = await rig(false);
  rigs.push(off);
  const on = await rig(true);
  rigs.push(on);
  await pass(off, 1000, false); // warm-up
  await pass(on, 1000, false);
  const offRates: number[] = [];
  const onRates: number[] = [];
  for (let i = 0; i < 3; i++) {
    offRates.push(await pass(off, PASS_MS));
    onRates.push(await pass(on, PASS_MS));
  }
  const fmt = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(",");
  console.log(`passes: log_off=${fmt(offRates)} log_on=${fmt(onRates)} SVIDs/s (batch ${BATCH}, ${IN_FLIGHT} in flight, each server in its own process)`);
  const perSvid = (r: Rig, what: "s" | "main") => {
    const c = cpu.get(r);
    return c && c.svids > 0 ? (c[what] * 1e6) / c.svids : undefined;
  };
  const [cOff, cOn, mOff, mOn] = [perSvid(off, "s"), perSvid(on, "s"), perSvid(off, "main"), perSvid(on, "main")];
  // Informational: the server's CPU per SVID, all threads (the target is the throughput ratio above),
  // and how much of it is the event loop (the rest: signing and writer threads, V8's helpers).
  if (cOff !== undefined && cOn !== undefined && mOff !== undefined && mOn !== undefined) {
    console.log(`server CPU per SVID (all threads): log_off=${cOff.toFixed(1)} µs log_on=${cOn.toFixed(1)} µs, off/on=${(cOff / cOn).toFixed(3)}`);
    console.log(`  of which the event loop: log_off=${mOff.toFixed(1)} µs log_on=${mOn.toFixed(1)} µs; other threads: log_off=${(cOff - mOff).toFixed(1)} µs log_on=${(cOn - mOn).toFixed(1)} µs`);
  }
  report({
    name: "tlog-issuance-x509-svid-e2e (transparency log on)",
    value: median(onRates),
    unit: "SVIDs/s",
    baseline: { value: median(offRates), unit: "SVIDs/s", what: "the same issuance with transparency_log.enabled false, same run" },
    target: { kind: "ratio", op: ">=", bound: 0.9 },
  });
} finally {
  for (const r of rigs) {
    r.agent.api.close();
    await r.srv.stop();
    rmSync(r.dir, { recursive: true, force: true });
  }
}
