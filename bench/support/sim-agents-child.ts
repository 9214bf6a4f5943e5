/**
 * Simulated agents for bench/agent-push.bench.ts, in their own process so the
 * server is measured alone: each agent identity attests with a join token,
 * keeps its own mTLS channel (the real agent client, `GrpcServerClient`),
 * holds a WatchChanges stream, syncs with deltas on every notice and every
 * 5 s (with jitter), and asks for SVIDs of new entries, as an agent does.
 *
 * argv: <agent API address> <roots PEM file> <tokens file, one per line>
 * stdout: {"ready":n} once every identity is attested and watching; then, on
 * "quit" from stdin, {"stats":{…}} and exit.
 */
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { GrpcServerClient } from "../../agent/sync/server-client.js";
import { systemClock } from "../../common/clock.js";
import { parseTrustDomain } from "../../spiffe/id.js";
import { decodePemCertificates } from "../../spiffe/pem.js";
import { generateKeyPair } from "../../spiffe/signer.js";

const [address, rootsPath, tokensPath] = process.argv.slice(2) as [string, string, string];
const roots = decodePemCertificates(readFileSync(rootsPath, "utf8"));
const tokens = readFileSync(tokensPath, "utf8").split("\n").filter((t) => t !== "");
const td = parseTrustDomain("example.org");
const POLL_MS = 5000;
const stats = { syncs: 0, deltas: 0, full: 0, notices: 0, svids: 0, errors: 0 };

class SimAgent {
  readonly client = new GrpcServerClient({ address, trustDomain: td, clock: systemClock, roots, deadlineMs: 30_000 });
  revision = "";
  readonly svidFor = new Set<string>();
  running = false;
  again = false;

  async start(token: string): Promise<void> {
    const r = await this.client.attest({ name: "join_token", payload: async () => Buffer.from(token) });
    this.client.setIdentity(r.svid);
    await this.sync();
    this.client.watchChanges(
      () => {
        stats.notices++;
        void this.sync();
      },
      () => stats.errors++,
    );
    const t = setInterval(() => void this.sync(), POLL_MS + Math.random() * 1000);
    t.unref();
  }

  async sync(): Promise<void> {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    try {
      do {
        this.again = false;
        const res = await this.client.sync(this.revision, true);
        stats.syncs++;
        if (res.notModified) continue;
        if (res.delta) stats.deltas++;
        else stats.full++;
        this.revision = res.revision;
        const fresh = res.entries.filter((e) => !this.svidFor.has(e.id));
        if (fresh.length === 0) continue;
        const params = fresh.map((e) => ({ entryId: e.id, publicKey: new Uint8Array(generateKeyPair("ec-p256").publicKey.export({ format: "der", type: "spki" })) }));
        const results = await this.client.batchNewX509Svid(params);
        results.forEach((r, i) => {
          if (r.ok) {
            stats.svids++;
            this.svidFor.add(fresh[i]!.id);
          }
        });
      } while (this.again);
    } catch {
      stats.errors++;
    } finally {
      this.running = false;
    }
  }
}

const agents: SimAgent[] = [];
const CONCURRENCY = 20;
for (let i = 0; i < tokens.length; i += CONCURRENCY) {
  await Promise.all(
    tokens.slice(i, i + CONCURRENCY).map(async (t) => {
      const a = new SimAgent();
      await a.start(t);
      agents.push(a);
    }),
  );
}
console.log(JSON.stringify({ ready: agents.length }));
createInterface({ input: process.stdin }).on("line", (l) => {
  if (l.trim() !== "quit") return;
  console.log(JSON.stringify({ stats }));
  for (const a of agents) a.client.close();
  process.exit(0);
});
