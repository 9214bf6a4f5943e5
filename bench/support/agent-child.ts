/**
 * The bench side of `workload-agent-child.ts`: starts the child, reads its
 * JSON lines, sends it commands, and connects and tears down the 1,000
 * clients the agent benchmarks use (bench/agent-workload-api.bench.ts,
 * bench/sds.bench.ts).
 */
import { spawn } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Client, credentials, Metadata, type ClientReadableStream, type ServiceError } from "@grpc/grpc-js";

const here = path.dirname(fileURLToPath(import.meta.url));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Connections opened at once while setting up (the agent listens with Node's default backlog of 511). */
const CONNECT_BATCH = 200;

/** The child's first line. */
export interface AgentChildReady {
  readonly agentSocket: string;
  readonly echoSocket: string;
  readonly rssBeforeMb: number;
  readonly rssAfterMb: number;
  readonly entries: number;
  readonly svids: number;
  readonly benchSpiffeId: string;
}

/** A running child. */
export interface AgentChild {
  readonly ready: AgentChildReady;
  /** The next line from the child that has `key`. */
  nextLine(key: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  command(cmd: string): void;
  /** Quits the child and waits for its exit. */
  stop(): Promise<void>;
}

/**
 * Starts the child for the bench process's uid with `conns` entries.
 * SIGIL_BENCH_CHILD_ARGS: extra node options for it (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof").
 */
export async function startAgentChild(conns: number): Promise<AgentChild> {
  const uid = process.getuid?.() ?? 0;
  const childArgs = (process.env.SIGIL_BENCH_CHILD_ARGS ?? "").split(" ").filter((a) => a !== "");
  const child = spawn(process.execPath, [...childArgs, "--import", "tsx", "--expose-gc", path.join(here, "workload-agent-child.ts"), String(uid), String(conns)], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines: Record<string, unknown>[] = [];
  const waiters: Array<() => void> = [];
  let finished = false;
  createInterface({ input: child.stdout }).on("line", (line) => {
    lines.push(JSON.parse(line) as Record<string, unknown>);
    for (const w of waiters.splice(0)) w();
  });
  child.once("exit", (code) => {
    if (!finished) {
      console.error(`agent child exited early (code ${code})`);
      process.exit(1);
    }
  });
  async function nextLine(key: string, timeoutMs = 60_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = lines.findIndex((l) => key in l);
      if (i >= 0) return lines.splice(i, 1)[0] as Record<string, unknown>;
      if (Date.now() > deadline) throw new Error(`bench: no "${key}" line from the agent child in ${timeoutMs} ms`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 100);
      });
    }
  }
  const command = (cmd: string): void => void child.stdin.write(`${cmd}\n`);
  const ready = (await nextLine("ready")) as unknown as AgentChildReady;
  return {
    ready,
    nextLine,
    command,
    async stop() {
      finished = true;
      command("quit");
      child.stdin.end();
      await new Promise((r) => child.once("exit", r));
    },
  };
}

/** `conns` grpc-js clients on `socket`, one channel and one connection each, connected. */
export async function connectClients(socket: string, conns: number): Promise<Client[]> {
  const clients: Client[] = [];
  for (let i = 0; i < conns; i += CONNECT_BATCH) {
    const batch = Array.from({ length: Math.min(CONNECT_BATCH, conns - i) }, () => new Client(`unix:${socket}`, credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 }));
    await Promise.all(batch.map((c) => new Promise<void>((resolve, reject) => c.waitForReady(Date.now() + 30_000, (e) => (e ? reject(e) : resolve())))));
    clients.push(...batch);
  }
  return clients;
}

/** Closes the clients and lets the sockets go. */
export async function closeClients(clients: Client[]): Promise<void> {
  for (const c of clients) c.close();
  await sleep(200);
  globalThis.gc?.();
}

/** An open stream and what it received after its first message. */
export interface BenchStream {
  readonly call: Pick<ClientReadableStream<Buffer>, "cancel">;
  /** Every message received after the first, with its arrival time (`performance.timeOrigin + performance.now()`). */
  readonly later: { at: number; data: Buffer }[];
}

const identity = (b: Buffer): Buffer => b;

/** Opens a server stream on `path` per client (raw bytes); resolves once every stream has its first message. */
export async function openServerStreams(clients: readonly Client[], path: string, request: Buffer, metadata: () => Metadata = () => new Metadata()): Promise<BenchStream[]> {
  const streams: BenchStream[] = [];
  await new Promise<void>((resolve, reject) => {
    let pending = clients.length;
    for (const c of clients) {
      const call = c.makeServerStreamRequest(path, identity, identity, request, metadata());
      const s: BenchStream = { call, later: [] };
      let got = false;
      call.on("data", (d: Buffer) => {
        if (got) return void s.later.push({ at: performance.timeOrigin + performance.now(), data: d });
        got = true;
        if (--pending === 0) resolve();
      });
      call.on("error", (e: ServiceError) => {
        if (e.code !== 1 /* CANCELLED */) reject(e);
      });
      streams.push(s);
    }
  });
  return streams;
}

/** Waits until `match` holds for a later message on every stream; returns the last arrival time (or throws). */
export async function lastArrival(streams: readonly BenchStream[], match: (d: Buffer) => boolean, timeoutMs = 30_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let last = 0;
    let missing = 0;
    for (const s of streams) {
      const hit = s.later.find((m) => match(m.data));
      if (hit === undefined) missing++;
      else last = Math.max(last, hit.at);
    }
    if (missing === 0) return last;
    if (Date.now() > deadline) throw new Error(`bench: ${missing} of ${streams.length} streams never received the update`);
    await sleep(20);
  }
}
