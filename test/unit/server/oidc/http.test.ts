/**
 * The discovery listener, as a relying party sees it: both documents at the
 * issuer's paths, with caching headers and entity tags; 503 before any key,
 * 404 elsewhere, 405 (with Allow) for other methods, HEAD without a body, and
 * HTTPS with a serving certificate that is reloaded when its files change.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { PUBLIC_HTTP_LIMITS } from "../../../../common/http-limits.js";
import { createLogger } from "../../../../common/log.js";
import { renderOidcDocuments, type OidcDocuments } from "../../../../server/oidc/discovery.js";
import { startOidcListener, type OidcListener } from "../../../../server/oidc/http.js";
import { generateSigner } from "../../../../spiffe/signer.js";
import { createServingPki } from "../../../support/serving-cert.js";
import { requireTool } from "../../../support/tools.js";

const log = createLogger({ level: "error", destination: { write: () => undefined } });
const issuer = "https://oidc.example.org/td";
let listener: OidcListener | undefined;
afterEach(async () => {
  await listener?.close();
  listener = undefined;
});

function documents(): OidcDocuments {
  return renderOidcDocuments({ issuer }, new Map([["k1", generateSigner("ec-p256").publicKey]]));
}

async function start(docs: () => OidcDocuments | undefined): Promise<OidcListener> {
  listener = await startOidcListener({ host: "127.0.0.1", port: 0, issuer, documents: docs, maxAgeSeconds: 60, log });
  return listener;
}

describe("OIDC discovery listener", () => {
  it("serves both documents at the root and under the issuer's path, with caching headers", async () => {
    const docs = documents();
    const l = await start(() => docs);
    for (const p of ["/.well-known/openid-configuration", "/td/.well-known/openid-configuration"]) {
      const r = await fetch(`${l.url}${p}`);
      expect(r.status).toBe(200);
      expect(r.headers.get("content-type")).toBe("application/json");
      expect(r.headers.get("cache-control")).toBe("public, max-age=60");
      expect(r.headers.get("etag")).toBe(docs.configurationEtag);
      expect(((await r.json()) as { issuer: string }).issuer).toBe(issuer);
    }
    for (const p of ["/keys", "/td/keys"]) {
      const r = await fetch(`${l.url}${p}`);
      expect(r.status).toBe(200);
      expect(((await r.json()) as { keys: { kid: string; use: string }[] }).keys).toMatchObject([{ kid: "k1", use: "sig" }]);
    }
  });

  it("answers 304 to a matching If-None-Match, 404 elsewhere, 405 with Allow to POST, HEAD without a body", async () => {
    const docs = documents();
    const l = await start(() => docs);
    expect((await fetch(`${l.url}/keys`, { headers: { "if-none-match": docs.jwksEtag } })).status).toBe(304);
    expect((await fetch(`${l.url}/keys`, { headers: { "if-none-match": '"other"' } })).status).toBe(200);
    expect((await fetch(`${l.url}/jwks`)).status).toBe(404);
    const post = await fetch(`${l.url}/keys`, { method: "POST", body: "x" });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("GET, HEAD");
    const head = await fetch(`${l.url}/keys`, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(Number(head.headers.get("content-length"))).toBe(Buffer.byteLength(docs.jwks));
    expect(await head.text()).toBe("");
  });

  it("answers 503 until there are keys, then serves the documents the caller holds now", async () => {
    let docs: OidcDocuments | undefined;
    const l = await start(() => docs);
    const before = await fetch(`${l.url}/keys`);
    expect(before.status).toBe(503);
    expect(before.headers.get("cache-control")).toBe("no-store");
    docs = documents();
    expect((await fetch(`${l.url}/keys`)).status).toBe(200);
  });

  it.skipIf(!requireTool("openssl", ["version"], "the serving certificate"))("serves HTTPS and picks up a renewed certificate from its files", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "sigil-oidc-http-"));
    try {
      const first = createServingPki("oidc one");
      const second = createServingPki("oidc two");
      const certFile = path.join(dir, "cert.pem");
      const keyFile = path.join(dir, "key.pem");
      writeFileSync(certFile, first.certPem);
      writeFileSync(keyFile, first.keyPem);
      const docs = documents();
      listener = await startOidcListener({ host: "127.0.0.1", port: 0, issuer, tls: { certFile, keyFile }, documents: () => docs, maxAgeSeconds: 60, tlsReloadIntervalMs: 50, log });
      const url = `${listener.url}/.well-known/openid-configuration`;
      expect(listener.url.startsWith("https://")).toBe(true);
      const get = (ca: string) =>
        new Promise<number>((resolve, reject) => {
          const req = httpsRequest(url, { ca, agent: false }, (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          });
          req.on("error", reject);
          req.end();
        });
      expect(await get(first.caPem)).toBe(200);
      await expect(get(second.caPem)).rejects.toThrow();
      writeFileSync(keyFile, second.keyPem);
      writeFileSync(certFile, second.certPem);
      await vi.waitFor(async () => expect(await get(second.caPem)).toBe(200), { timeout: 10_000, interval: 100 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("one client cannot hold more than maxConnections connections open", async () => {
    const docs = documents();
    listener = await startOidcListener({ host: "127.0.0.1", port: 0, issuer, documents: () => docs, maxAgeSeconds: 60, log, limits: { ...PUBLIC_HTTP_LIMITS, maxConnections: 2 } });
    const open = (): Promise<Socket> =>
      new Promise((resolve, reject) => {
        const s = connect((listener as OidcListener).port, "127.0.0.1", () => resolve(s));
        s.on("error", reject);
      });
    const held = [await open(), await open()];
    try {
      const third = await open();
      const closed = await new Promise<boolean>((resolve) => {
        third.on("close", () => resolve(true));
        third.on("error", () => undefined);
        setTimeout(() => resolve(false), 2_000);
      });
      third.destroy();
      expect(closed).toBe(true);
    } finally {
      for (const s of held) s.destroy();
    }
    await vi.waitFor(async () => expect((await fetch(`${listener?.url}/keys`)).status).toBe(200), { timeout: 5_000, interval: 50 });
  });

  it("a client that sends its headers slowly is cut off after the headers timeout (slowloris)", async () => {
    const docs = documents();
    listener = await startOidcListener({ host: "127.0.0.1", port: 0, issuer, documents: () => docs, maxAgeSeconds: 60, log, limits: { ...PUBLIC_HTTP_LIMITS, headersTimeoutMs: 300, requestTimeoutMs: 400 } });
    const socket = connect(listener.port, "127.0.0.1");
    socket.on("error", () => undefined);
    let received = "";
    socket.on("data", (d: Buffer) => (received += d.toString()));
    socket.write("GET /keys HTTP/1.1\r\nHost: x\r\n");
    // One header byte every 50 ms: never idle, never done.
    const drip = setInterval(() => socket.write("X"), 50);
    try {
      await new Promise<void>((resolve) => socket.on("close", () => resolve()));
    } finally {
      clearInterval(drip);
      socket.destroy();
    }
    // A 408 comes only from the headers timeout (the drip never idles and never ends the headers).
    expect(received).toMatch(/^HTTP\/1\.1 408/);
  });

  it("refuses to start on a certificate that does not load, naming the files", async () => {
    await expect(
      startOidcListener({ host: "127.0.0.1", port: 0, issuer, tls: { certFile: "/nonexistent/c.pem", keyFile: "/nonexistent/k.pem" }, documents: () => undefined, maxAgeSeconds: 60, log }),
    ).rejects.toThrow(/oidc: cannot load the serving certificate \/nonexistent\/c\.pem and key \/nonexistent\/k\.pem/);
  });
});
