/**
 * Simulated agents for bench/agent-push.bench.ts and bench/scale/, in their
 * own process so the server is measured alone: each agent identity attests
 * with a join token, keeps its own mTLS channel (the real agent client,
 * `GrpcServerClient`, spread over the servers given and failing over as an
 * agent does), holds a WatchChanges stream, syncs with deltas on every notice
 * and every 5 s (with jitter), asks for SVIDs of new entries, and renews its
 * workload SVIDs and its own agent SVID at half their lifetime, as an agent
 * does.
 *
 * argv: <agent API address[,address…]> <roots PEM file> <tokens file, one per line>
 * stdout, one JSON object per line: {"ready":n} once every identity is attested
 * and watching. Commands on stdin, one per line:
 * - `mark`: starts a measurement window; answers {"marked":n}.
 * - `report`: answers {"report":{…}} with the window's counts, every sync's
 *   latency (ms) since `mark`, and when (ms since the epoch) each entry first
 *   seen since `mark` had its first SVID signed (`firstSvid`: entry ID → time),
 *   for the harness's entry-create-to-SVID figure.
 * - `renew-all [n]`: every agent asks for all its SVIDs again, n agents at a time
 *   (default SIGIL_SIM_CONCURRENCY); answers {"renewed":{"svids":n,"ms":…}} once all are signed.
 * - `quit`: answers {"stats":{…}} (totals) and exits.
 *
 * Cheap enough for thousands of agents per process beside the server: one
 * timer drives every agent's poll and renewals (not one per agent), the
 * SVID keys come from a small pool made at start (the server signs whatever
 * public key it is given; a fresh P-256 key per SVID cost the harness more
 * than the server's signature), and attestations run at most
 * SIGIL_SIM_CONCURRENCY at once (default 20; the harness divides its budget
 * over its processes), spread over the first second.
 */
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import type { AgentSvid } from "../../agent/storage/agent-svid.js";
import { GrpcServerClient, type SyncedEntry } from "../../agent/sync/server-client.js";
import { systemClock } from "../../common/clock.js";
import { parseTrustDomain } from "../../spiffe/id.js";
import { decodePemCertificates } from "../../spiffe/pem.js";
import { generateKeyPair } from "../../spiffe/signer.js";

const [addressArg, rootsPath, tokensPath] = process.argv.slice(2) as [string, string, string];
const addresses = addressArg.split(",").filter((a) => a !== "");
const roots = decodePemCertificates(readFileSync(rootsPath, "utf8"));
const tokens = readFileSync(tokensPath, "utf8").split("\n").filter((t) => t !== "");
const td = parseTrustDomain("example.org");
const POLL_MS = 5000;
const stats = { syncs: 0, deltas: 0, full: 0, notices: 0, svids: 0, renewals: 0, agentRenewals: 0, streamEnds: 0, errors: 0 };
/** The current measurement window (see `mark`). */
let win = { ...stats, latencies: [] as number[], firstSvid: {} as Record<string, number>, started: performance.now() };

/** The last failure's message (for the harness's log: a count alone does not say what failed). */
let lastError = "";
const count = (k: keyof typeof stats, n = 1): void => {
  stats[k] += n;
  win[k] += n;
};

/** SVID public keys, reused in turn (see the module comment). */
const KEY_POOL = Array.from({ length: 16 }, () => new Uint8Array(generateKeyPair("ec-p256").publicKey.export({ format: "der", type: "spki" })));
let nextKey = 0;
function publicKeyDer(): Uint8Array {
  nextKey = (nextKey + 1) % KEY_POOL.length;
  return KEY_POOL[nextKey] as Uint8Array;
}

class SimAgent {
  readonly client = new GrpcServerClient({ address: addresses.length === 1 ? (addresses[0] as string) : addresses, trustDomain: td, clock: systemClock, roots, deadlineMs: 30_000 });
  revision = "";
  /** Entry ID → when its SVID is due for renewal (ms since the epoch, half its TTL after signing). */
  readonly renewAt = new Map<string, number>();
  /** Entry ID → X509-SVID TTL in seconds (0: the server's default, renewed only by `renew-all`). */
  readonly ttl = new Map<string, number>();
  agentRenewAt = Infinity;
  /** When the next poll is due (performance.now() ms), driven by the shared tick. */
  nextPoll = Infinity;
  running = false;
  again = false;
  closed = false;

  async start(token: string): Promise<void> {
    const r = await this.client.attest({ name: "join_token", payload: async () => Buffer.from(token) });
    this.#setIdentity(r.svid);
    await this.sync();
    this.watch();
    this.nextPoll = performance.now() + POLL_MS + Math.random() * 1000;
  }

  #setIdentity(svid: AgentSvid): void {
    this.client.setIdentity(svid);
    const life = svid.notAfter.getTime() - svid.notBefore.getTime();
    this.agentRenewAt = svid.notBefore.getTime() + life / 2;
  }

  /** Holds the change stream, opening it again a moment after it ends (server restart, agent SVID renewed). */
  watch(): void {
    this.client.watchChanges(
      () => {
        count("notices");
        void this.sync();
      },
      () => {
        count("streamEnds");
        if (!this.closed) setTimeout(() => this.watch(), 1000 + Math.random() * 1000).unref();
      },
    );
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
        const t0 = performance.now();
        const res = await this.client.sync(this.revision, true);
        win.latencies.push(performance.now() - t0);
        count("syncs");
        if (res.notModified) continue;
        if (res.delta) count("deltas");
        else count("full");
        this.revision = res.revision;
        for (const id of res.delta?.removedEntryIds ?? []) {
          this.renewAt.delete(id);
          this.ttl.delete(id);
        }
        if (res.delta === undefined) {
          const held = new Set(res.entries.map((e) => e.id));
          for (const id of [...this.ttl.keys()]) if (!held.has(id)) (this.ttl.delete(id), this.renewAt.delete(id));
        }
        const fresh = res.entries.filter((e) => !this.ttl.has(e.id) || this.ttl.get(e.id) !== e.x509SvidTtlSeconds);
        if (fresh.length > 0) {
          const firstSeen = fresh.filter((e) => !this.ttl.has(e.id)).map((e) => e.id);
          await this.sign(fresh.map((e) => e.id), fresh, "svids");
          const at = Date.now();
          for (const id of firstSeen) if (this.renewAt.has(id)) win.firstSvid[id] = at;
        }
      } while (this.again);
    } catch {
      count("errors");
    } finally {
      this.running = false;
    }
  }

  /** Signs SVIDs for `ids` (new keys) and schedules each one's renewal at half its TTL. */
  async sign(ids: readonly string[], entries: readonly SyncedEntry[] | undefined, what: "svids" | "renewals"): Promise<number> {
    if (entries !== undefined) for (const e of entries) this.ttl.set(e.id, e.x509SvidTtlSeconds);
    const results = await this.client.batchNewX509Svid(ids.map((entryId) => ({ entryId, publicKey: publicKeyDer() })));
    const now = Date.now();
    let ok = 0;
    results.forEach((r, i) => {
      const id = ids[i] as string;
      if (!r.ok) return void ((lastError = `BatchNewX509SVID: ${r.code} ${r.message}`), count("errors"));
      ok++;
      const ttl = this.ttl.get(id) ?? 0;
      // Agents renew at half life; a little jitter keeps renewals of SVIDs signed together from staying in step.
      if (ttl > 0) this.renewAt.set(id, now + ttl * 500 * (0.9 + Math.random() * 0.2));
    });
    count(what, ok);
    return ok;
  }

  /** Renews what is due: workload SVIDs past half life, and the agent SVID. */
  async renewDue(now: number): Promise<void> {
    if (this.closed) return;
    try {
      if (now >= this.agentRenewAt) {
        this.agentRenewAt = Infinity;
        this.#setIdentity(await this.client.renew());
        count("agentRenewals");
      }
      const due = [...this.renewAt].filter(([, at]) => at <= now).map(([id]) => id);
      if (due.length === 0) return;
      for (const id of due) this.renewAt.delete(id);
      await this.sign(due, undefined, "renewals");
    } catch {
      count("errors");
    }
  }
}

const agents: SimAgent[] = [];
const CONCURRENCY = Math.max(1, Number(process.env.SIGIL_SIM_CONCURRENCY ?? "20") || 20);

// One tick for every agent's poll (5 s plus up to 1 s of jitter after the last, as an agent's timer), not a timer per agent.
setInterval(() => {
  const now = performance.now();
  for (const a of agents) {
    if (a.nextPoll > now) continue;
    a.nextPoll = now + POLL_MS + Math.random() * 1000;
    void a.sync();
  }
}, 100).unref();

// Attestations through a pool of CONCURRENCY workers (a slow one does not hold up a whole batch), started over the first second.
let nextToken = 0;
await Promise.all(
  Array.from({ length: Math.min(CONCURRENCY, tokens.length) }, async (_, w) => {
    await new Promise((r) => setTimeout(r, (w * 1000) / CONCURRENCY));
    for (let t = tokens[nextToken++]; t !== undefined; t = tokens[nextToken++]) await attestOne(t);
  }),
);

async function attestOne(t: string): Promise<void> {
  // A refused attestation (a database conflict the server gave up on) is tried again, as an agent retries; the token is spent only on success.
  for (let attempt = 1; ; attempt++) {
    const a = new SimAgent();
    try {
      await a.start(t);
      agents.push(a);
      return;
    } catch (e) {
      a.client.close();
      count("errors");
      process.stderr.write(`sim agents: attestation attempt ${attempt} with token ${t.slice(0, 8)}… failed: ${(e as Error).message}\n`);
      if (attempt >= 5) throw e;
      await new Promise((r) => setTimeout(r, 500 * attempt));
    }
  }
}

// One timer for every agent's renewals (thousands of per-SVID timers would cost more than the work).
let renewing = false;
setInterval(() => {
  if (renewing) return;
  renewing = true;
  const now = Date.now();
  void (async () => {
    for (let i = 0; i < agents.length; i += CONCURRENCY) await Promise.all(agents.slice(i, i + CONCURRENCY).map((a) => a.renewDue(now)));
  })().finally(() => (renewing = false));
}, 1000).unref();

const say = (o: unknown): void => void process.stdout.write(`${JSON.stringify(o)}\n`);
say({ ready: agents.length });

createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = line.trim();
  if (cmd === "mark") {
    win = { ...stats, latencies: [], firstSvid: {}, started: performance.now() };
    for (const k of Object.keys(stats) as Array<keyof typeof stats>) win[k] = 0;
    say({ marked: agents.length });
  } else if (cmd === "report") {
    say({ report: { ...win, seconds: (performance.now() - win.started) / 1000 } });
  } else if (cmd === "renew-all" || cmd.startsWith("renew-all ")) {
    const inFlight = Math.max(1, Number(cmd.slice("renew-all".length).trim() || CONCURRENCY) || CONCURRENCY);
    void (async () => {
      const t0 = performance.now();
      // Every agent asking for all its SVIDs in one batch, as after a CA change, CONCURRENCY agents at a time: all at once,
      // thousands of batches would wait past their deadline in the server's queue and measure nothing.
      let next = 0;
      let signed = 0;
      await Promise.all(
        Array.from({ length: Math.min(inFlight, agents.length) }, async () => {
          for (let a = agents[next++]; a !== undefined; a = agents[next++]) {
            // Not `signed += await …`: that reads `signed` before the wait and loses the other workers' additions.
            const n = await a.sign([...a.ttl.keys()], undefined, "renewals").catch((e: unknown) => ((lastError = String(e)), count("errors"), 0));
            signed += n;
          }
        }),
      );
      say({ renewed: { svids: signed, ms: performance.now() - t0, errors: stats.errors, lastError } });
    })();
  } else if (cmd === "quit") {
    say({ stats });
    for (const a of agents) {
      a.closed = true;
      a.client.close();
    }
    process.exit(0);
  }
});
