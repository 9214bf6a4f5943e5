import * as https from "node:https";
import type { AddressInfo } from "node:net";
import * as tls from "node:tls";
import { afterEach, describe, expect, it } from "vitest";
import { X509Bundle } from "../../../../spiffe/bundle/x509-bundle.js";
import { isSigilError, type SigilError } from "../../../../spiffe/errors.js";
import { parseSpiffeId } from "../../../../spiffe/id.js";
import { authorizeAny, authorizeId, authorizeMemberOf, type Authorizer } from "../../../../spiffe/tls/authorizer.js";
import {
  createSpiffeTlsServer,
  guardSpiffeTlsServer,
  mtlsClientOptions,
  mtlsServerOptions,
  peerSpiffeIdOf,
  tlsClientOptions,
  tlsServerOptions,
} from "../../../../spiffe/tls/options.js";
import { StaticX509Source, type TlsSvid, type TlsX509Source } from "../../../../spiffe/tls/source.js";
import type { X509Source } from "../../../../spiffe/workloadapi/x509-source.js";
import { craftCertificate, makeLeaf, makeRoot, type TestCa } from "../../../fixtures/x509/pki.js";

// Node's TLS checks validity against the real clock, so this PKI is valid now.
const NOT_BEFORE = new Date(Date.now() - 3600_000);
const NOT_AFTER = new Date(Date.now() + 86400_000);
const root = (td: string): TestCa => makeRoot(td, { notBefore: NOT_BEFORE, notAfter: NOT_AFTER });
const svidOf = (ca: TestCa, id: string): TlsSvid => {
  const leaf = makeLeaf(ca, id, { notBefore: NOT_BEFORE, notAfter: NOT_AFTER });
  return { id: parseSpiffeId(id), certificateDers: leaf.chain, privateKey: leaf.key.privateKey };
};
const bundleOf = (ca: TestCa): X509Bundle => new X509Bundle(ca.td, [ca.rootDer]);

const caA = root("a.test");
const caB = root("b.test");
const rogueB = root("b.test"); // same trust domain name, a root nobody trusts
const bundles = [bundleOf(caA), bundleOf(caB)];

const servers: tls.Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

interface ServerRun {
  readonly port: number;
  readonly accepted: string[];
  readonly received: string[];
  readonly refusals: SigilError[];
}

/** A guarded server that greets every accepted client with "greeting" and records what clients send. */
async function startServer(options: tls.TlsOptions): Promise<ServerRun> {
  const run = { port: 0, accepted: [] as string[], received: [] as string[], refusals: [] as SigilError[] };
  const server = createSpiffeTlsServer(options, (socket) => {
    run.accepted.push(peerSpiffeIdOf(socket) ?? "(anonymous)");
    socket.on("data", (d: Buffer) => run.received.push(d.toString()));
    socket.on("error", () => undefined);
    socket.write("greeting");
  });
  server.on("tlsClientError", (e) => run.refusals.push(e as SigilError));
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return Object.assign(run, { port: (server.address() as AddressInfo).port });
}

interface ClientRun {
  readonly error: Error | undefined;
  readonly received: string;
  readonly serverCert: tls.PeerCertificate | undefined;
}

/** Connects, writes "hello" at once (before the handshake ends), and collects what arrives until the socket closes. */
function connect(port: number, options: tls.ConnectionOptions, servername?: string): Promise<ClientRun> {
  return new Promise((resolve) => {
    let received = "";
    let error: Error | undefined;
    let serverCert: tls.PeerCertificate | undefined;
    const socket = tls.connect({ host: "127.0.0.1", port, ...(servername === undefined ? {} : { servername }), ...options });
    socket.write("hello");
    socket.on("secureConnect", () => {
      serverCert = socket.getPeerCertificate();
      // Leave once the greeting had time to arrive.
      setTimeout(() => socket.end(), 100);
    });
    socket.on("data", (d: Buffer) => (received += d.toString()));
    socket.on("error", (e) => (error = e));
    socket.on("close", () => resolve({ error, received, serverCert }));
  });
}

describe("mutual TLS between two trust domains", () => {
  it("a b.test client and an a.test server authenticate each other through federated bundles", async () => {
    const serverSource = new StaticX509Source({ svid: svidOf(caA, "spiffe://a.test/server"), bundles });
    const clientSource = new StaticX509Source({ svid: svidOf(caB, "spiffe://b.test/client"), bundles });
    const server = await startServer(mtlsServerOptions(serverSource, authorizeMemberOf("b.test")));
    const client = await connect(server.port, mtlsClientOptions(clientSource, authorizeId("spiffe://a.test/server")));
    expect(client.error).toBeUndefined();
    expect(client.received).toBe("greeting");
    expect(server.accepted).toEqual(["spiffe://b.test/client"]);
    expect(server.received.join("")).toBe("hello");
  });

  it("the server's authorizer refuses a client: the client neither reaches the application nor receives from it", async () => {
    const serverSource = new StaticX509Source({ svid: svidOf(caA, "spiffe://a.test/server"), bundles });
    const clientSource = new StaticX509Source({ svid: svidOf(caB, "spiffe://b.test/client"), bundles });
    const server = await startServer(mtlsServerOptions(serverSource, authorizeId("spiffe://b.test/other")));
    const client = await connect(server.port, mtlsClientOptions(clientSource, authorizeAny()));
    expect(client.received).toBe("");
    expect(server.accepted).toEqual([]);
    expect(server.received).toEqual([]);
    expect(server.refusals).toHaveLength(1);
    expect(isSigilError(server.refusals[0], "ERR_PERMISSION_DENIED")).toBe(true);
    expect(server.refusals[0]?.message).toMatch(/spiffe:\/\/b\.test\/client is not authorized: want spiffe:\/\/b\.test\/other/);
  });

  it("the client's authorizer refuses the server: data written before the handshake never leaves, the greeting is not read", async () => {
    const serverSource = new StaticX509Source({ svid: svidOf(caA, "spiffe://a.test/server"), bundles });
    const clientSource = new StaticX509Source({ svid: svidOf(caB, "spiffe://b.test/client"), bundles });
    const server = await startServer(mtlsServerOptions(serverSource, authorizeAny()));
    const client = await connect(server.port, mtlsClientOptions(clientSource, authorizeId("spiffe://a.test/db")));
    expect(isSigilError(client.error, "ERR_PERMISSION_DENIED")).toBe(true);
    expect(client.error?.message).toMatch(/spiffe:\/\/a\.test\/server is not authorized: want spiffe:\/\/a\.test\/db/);
    expect(client.received).toBe("");
    expect(server.received).toEqual([]);
  });

  it("a client whose SVID chains to an untrusted root is refused", async () => {
    const serverSource = new StaticX509Source({ svid: svidOf(caA, "spiffe://a.test/server"), bundles });
    const clientSource = new StaticX509Source({ svid: svidOf(rogueB, "spiffe://b.test/client"), bundles });
    const server = await startServer(mtlsServerOptions(serverSource, authorizeAny()));
    const client = await connect(server.port, mtlsClientOptions(clientSource, authorizeAny()));
    expect(client.received).toBe("");
    expect(server.accepted).toEqual([]);
    expect(isSigilError(server.refusals[0], "ERR_X509_CHAIN_INVALID")).toBe(true);
    expect(server.refusals[0]?.message).toMatch(/unknown root|does not verify/);
  });

  it("a server whose SVID chains to an untrusted root is refused by the client", async () => {
    const serverSource = new StaticX509Source({ svid: svidOf(rogueB, "spiffe://b.test/server"), bundles });
    const clientSource = new StaticX509Source({ svid: svidOf(caA, "spiffe://a.test/client"), bundles });
    const server = await startServer(mtlsServerOptions(serverSource, authorizeAny()));
    const client = await connect(server.port, mtlsClientOptions(clientSource, authorizeAny()));
    expect(client.error).toBeDefined();
    expect(client.received).toBe("");
    expect(server.received).toEqual([]);
  });

  it("FED-6: an SVID claiming a.test but signed by b.test's root is refused on both sides", async () => {
    const forged = craftCertificate(caB, { uris: ["spiffe://a.test/server"], notBefore: NOT_BEFORE, notAfter: NOT_AFTER });
    const forgedSvid: TlsSvid = { id: parseSpiffeId("spiffe://a.test/server"), certificateDers: [forged.der], privateKey: forged.key.privateKey };
    const honest = new StaticX509Source({ svid: svidOf(caA, "spiffe://a.test/honest"), bundles });
    const forger = new StaticX509Source({ svid: forgedSvid, bundles });

    const guarded = await startServer(mtlsServerOptions(honest, authorizeAny()));
    const asClient = await connect(guarded.port, mtlsClientOptions(forger, authorizeAny()));
    expect(asClient.received).toBe("");
    expect(guarded.accepted).toEqual([]);
    expect(guarded.refusals[0]?.message).toMatch(/trust domain a\.test/);

    const forging = await startServer(mtlsServerOptions(forger, authorizeAny()));
    const toForger = await connect(forging.port, mtlsClientOptions(honest, authorizeAny()));
    expect(isSigilError(toForger.error, "ERR_X509_CHAIN_INVALID")).toBe(true);
    expect(forging.received).toEqual([]);
  });

  it.each([
    ["without SNI (by IP address)", undefined],
    ["with SNI", "localhost"],
  ])("a rotated server SVID is presented from the next connection on, %s", async (_label, servername) => {
    const first = svidOf(caA, "spiffe://a.test/server");
    const second = svidOf(caA, "spiffe://a.test/server");
    const serverSource = new StaticX509Source({ svid: first, bundles });
    const clientSource = new StaticX509Source({ svid: svidOf(caB, "spiffe://b.test/client"), bundles });
    const server = await startServer(mtlsServerOptions(serverSource, authorizeAny()));
    const options = mtlsClientOptions(clientSource, authorizeId("spiffe://a.test/server"));
    const before = await connect(server.port, options, servername);
    serverSource.update({ svid: second });
    const after = await connect(server.port, options, servername);
    expect(Buffer.from(before.serverCert?.raw ?? []).equals(Buffer.from(first.certificateDers[0] as Uint8Array))).toBe(true);
    expect(Buffer.from(after.serverCert?.raw ?? []).equals(Buffer.from(second.certificateDers[0] as Uint8Array))).toBe(true);
    expect(after.received).toBe("greeting");
  });

  it("a client picks up a new bundle and a rotated SVID on its next connection", async () => {
    const caC = root("c.test");
    const serverSource = new StaticX509Source({ svid: svidOf(caC, "spiffe://c.test/server"), bundles: [...bundles, bundleOf(caC)] });
    const clientSource = new StaticX509Source({ svid: svidOf(caB, "spiffe://b.test/client"), bundles });
    const server = await startServer(mtlsServerOptions(serverSource, authorizeAny()));
    const options = mtlsClientOptions(clientSource, authorizeMemberOf("c.test"));
    const unknown = await connect(server.port, options);
    expect(unknown.error).toBeDefined();
    clientSource.update({ bundles: [...bundles, bundleOf(caC)], svid: svidOf(caB, "spiffe://b.test/client2") });
    const known = await connect(server.port, options);
    expect(known.error).toBeUndefined();
    expect(server.accepted).toEqual(["spiffe://b.test/client2"]);
  });
});

describe("resumption and renegotiation", () => {
  it.each(["TLSv1.2", "TLSv1.3"] as const)(
    "%s: an https.Agent's cached session does not let a server skip another authorizer's check",
    async (maxVersion) => {
      const serverSource = new StaticX509Source({ svid: svidOf(caA, "spiffe://a.test/evil"), bundles });
      const clientSource = new StaticX509Source({ svid: svidOf(caB, "spiffe://b.test/client"), bundles });
      const options = { ...mtlsServerOptions(serverSource, authorizeAny()), maxVersion };
      const server = guardSpiffeTlsServer(https.createServer(options, (_req, res) => res.end("secret")), options);
      servers.push(server);
      await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
      const port = (server.address() as AddressInfo).port;
      const agent = new https.Agent({ keepAlive: false });
      const get = (authorizer: Authorizer): Promise<string> =>
        new Promise((resolve) => {
          const req = https.request({ host: "127.0.0.1", port, agent, ...mtlsClientOptions(clientSource, authorizer) }, (res) => {
            let body = "";
            res.on("data", (d: Buffer) => (body += d.toString()));
            res.on("end", () => resolve(body));
          });
          req.on("error", (e) => resolve(`error: ${e.message}`));
          req.end();
        });
      try {
        expect(await get(authorizeAny())).toBe("secret");
        expect(await get(authorizeId("spiffe://a.test/api"))).toMatch(/error: tls: peer spiffe:\/\/a\.test\/evil is not authorized/);
      } finally {
        agent.destroy();
        server.closeAllConnections();
      }
    },
  );

  it("a TLS 1.2 client cannot renegotiate (and so present another certificate) after the server's check", async () => {
    const serverSource = new StaticX509Source({ svid: svidOf(caA, "spiffe://a.test/server"), bundles });
    const clientSource = new StaticX509Source({ svid: svidOf(caB, "spiffe://b.test/client"), bundles });
    const server = await startServer({ ...mtlsServerOptions(serverSource, authorizeAny()), maxVersion: "TLSv1.2" });
    let socket: tls.TLSSocket | undefined;
    const outcome = await new Promise<string>((resolve) => {
      // A client that would renegotiate: the builders' own options refuse to.
      socket = tls.connect({ host: "127.0.0.1", port: server.port, ...mtlsClientOptions(clientSource, authorizeAny()), secureOptions: 0 }, () => {
        socket?.renegotiate({ rejectUnauthorized: true }, (err) => resolve(err ? "refused" : "renegotiated"));
      });
      socket.on("error", () => resolve("refused"));
      socket.on("close", () => resolve("refused"));
    });
    socket?.destroy();
    expect(server.accepted).toEqual(["spiffe://b.test/client"]);
    expect(outcome).toBe("refused");
  });
});

describe("one-way TLS and misuse", () => {
  it("a one-way server takes clients without certificates; the client still checks the server's SVID", async () => {
    const serverSource = new StaticX509Source({ svid: svidOf(caA, "spiffe://a.test/server"), bundles });
    const server = await startServer(tlsServerOptions(serverSource));
    const ok = await connect(server.port, tlsClientOptions({ getX509BundleForTrustDomain: (td) => bundles.find((b) => b.trustDomain.equals(td)), getX509Bundles: () => bundles }, authorizeId("spiffe://a.test/server")));
    expect(ok.error).toBeUndefined();
    expect(server.accepted).toEqual(["(anonymous)"]);
    const refused = await connect(server.port, tlsClientOptions(serverSource, authorizeMemberOf("b.test")));
    expect(isSigilError(refused.error, "ERR_PERMISSION_DENIED")).toBe(true);
  });

  it("a mutual-TLS server refuses a client that presents no certificate", async () => {
    const serverSource = new StaticX509Source({ svid: svidOf(caA, "spiffe://a.test/server"), bundles });
    const server = await startServer(mtlsServerOptions(serverSource, authorizeAny()));
    const client = await connect(server.port, tlsClientOptions(serverSource, authorizeAny()));
    expect(client.received).toBe("");
    expect(server.accepted).toEqual([]);
    expect(server.refusals[0]?.message).toMatch(/presented no certificate/);
  });

  it("server options used with tls.createServer directly refuse every handshake (fail closed)", async () => {
    const serverSource = new StaticX509Source({ svid: svidOf(caA, "spiffe://a.test/server"), bundles });
    const clientSource = new StaticX509Source({ svid: svidOf(caB, "spiffe://b.test/client"), bundles });
    let reached = false;
    const server = tls.createServer(mtlsServerOptions(serverSource, authorizeAny()), () => (reached = true));
    server.on("tlsClientError", () => undefined);
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as AddressInfo).port;
    const byIp = await connect(port, mtlsClientOptions(clientSource, authorizeAny()));
    const bySni = await connect(port, mtlsClientOptions(clientSource, authorizeAny()), "localhost");
    expect(byIp.error).toBeDefined();
    expect(bySni.error).toBeDefined();
    expect(reached).toBe(false);
  });

  it("the Workload API's X509Source is a source the builders take", () => {
    // Compile-time: this file does not typecheck if X509Source stops fitting.
    const fits = (s: X509Source): TlsX509Source => s;
    expect(typeof fits).toBe("function");
  });

  it("builders name a wrong argument", () => {
    const source = new StaticX509Source({ svid: svidOf(caA, "spiffe://a.test/server"), bundles });
    expect(() => mtlsServerOptions({} as never, authorizeAny())).toThrow(/mtlsServerOptions: source must have/);
    expect(() => mtlsClientOptions(source, "spiffe://a.test/x" as never)).toThrow(/mtlsClientOptions: authorizer must be a function/);
    expect(() => createSpiffeTlsServer({ minVersion: "TLSv1.2" })).toThrow(/options must come from mtlsServerOptions/);
  });
});
