/** The `transparency_log` section: listener address forms, TLS files only in pairs and only with a listener. */
import { describe, expect, it } from "vitest";
import { serverConfigSchema } from "../../../../server/config/schema.js";
import { parseListenAddress, transparencyLogSection } from "../../../../server/tlog/config.js";
import { tlogListenerService } from "../../../../server/tlog/http.js";
import { createLogger } from "../../../../common/log.js";
import { memoryTlogView } from "../../../support/tlog-view.js";
import { generateKeyPairSync, sign } from "node:crypto";
import { createCosigner, generateCosigner } from "../../../../spiffe/tlog/cosignature.js";
import { generateNoteKey } from "../../../../spiffe/tlog/note.js";

describe("transparency_log config", () => {
  it("reads host:port listen addresses, IPv6 in brackets", () => {
    expect(parseListenAddress("0.0.0.0:8009")).toEqual({ host: "0.0.0.0", port: 8009 });
    expect(parseListenAddress("[::1]:0")).toEqual({ host: "::1", port: 0 });
    expect(parseListenAddress("log.example.org:443")).toEqual({ host: "log.example.org", port: 443 });
    for (const bad of ["8009", "::1:8009", "host:", "host:70000", "a b:1", "http://x:1"]) expect(parseListenAddress(bad), bad).toBeUndefined();
  });

  it("defaults to off, checkpoints every second or 1,000 entries, 100 tile requests a second per client (burst 1,000)", () => {
    expect(transparencyLogSection.parse({})).toEqual({ enabled: false, checkpoint_interval: 1000, checkpoint_batch: 1000, rate_limit: true, rate_limit_per_second: 100, rate_limit_burst: 1000 });
  });

  it("names the key at fault", () => {
    const issues = (input: unknown): string[] => transparencyLogSection.safeParse(input).error?.issues.map((i) => `${i.path.join(".")}: ${i.message}`) ?? [];
    expect(issues({ enabled: true, listen_address: "8009" })).toEqual(["listen_address: must be host:port (IPv6 in brackets), e.g. 0.0.0.0:8009"]);
    expect(issues({ enabled: true, listen_address: "127.0.0.1:1", tls_cert_file: "c.pem" })).toEqual(["tls_key_file: tls_cert_file and tls_key_file go together"]);
    expect(issues({ enabled: true, tls_cert_file: "c.pem", tls_key_file: "k.pem" })).toEqual([expect.stringMatching(/^listen_address: is required when tls_cert_file is set/)]);
    expect(issues({ enabled: true, listen_addres: "127.0.0.1:1" })[0]).toMatch(/listen_addres/);
    expect(serverConfigSchema.shape.transparency_log).toBeDefined();
  });

  it("checks witness settings and names the key at fault", () => {
    const issues = (input: unknown): string[] => transparencyLogSection.safeParse(input).error?.issues.map((i) => `${i.path.join(".")}: ${i.message}`) ?? [];
    const wkey = generateCosigner("w.example/sigil/witness").vkey;
    const logKey = generateNoteKey("peer.example/sigil/issuance").vkey;
    const base = { enabled: true, listen_address: "127.0.0.1:0" };
    expect(issues({ ...base, witnesses: [{ url: "https://w.example", key: wkey }], witness_quorum: 1, witness_timeout: "2s", witness: { logs: [{ keys: [logKey] }] } })).toEqual([]);
    const parsed = transparencyLogSection.parse({ ...base, witnesses: [{ url: "https://w.example", key: wkey }], witness_timeout: "2s" });
    expect([parsed.witness_timeout, parsed.witness_quorum]).toEqual([2000, undefined]);

    expect(issues({ ...base, witnesses: [{ url: "ftp://w.example", key: wkey }] })).toEqual(["witnesses.0.url: must be an http:// or https:// URL"]);
    expect(issues({ ...base, witnesses: [{ url: "https://w.example", key: logKey }] })).toEqual([expect.stringMatching(/^witnesses\.0\.key: not a witness key: .*type 0x01; cosignature\/v1 Ed25519 keys have type 0x04/)]);
    expect(issues({ ...base, witnesses: [{ url: "https://a.example", key: wkey }, { url: "https://b.example", key: wkey }] })).toEqual(["witnesses.1.key: witness key w.example/sigil/witness+" + wkey.split("+")[1] + " is listed twice"]);
    expect(issues({ ...base, witnesses: [{ url: "https://w.example", key: wkey }], witness_quorum: 2 })).toEqual(["witness_quorum: is 2, more than the 1 witness(es) configured"]);
    expect(issues({ ...base, witness: { logs: [{ keys: [wkey] }] } })).toEqual([expect.stringMatching(/^witness\.logs\.0\.keys\.0: not a log verifier key: .*unsupported signature type 0x04/)]);
    expect(issues({ ...base, witness: { logs: [] } })).toEqual([expect.stringMatching(/^witness\.logs: /)]);
    expect(issues({ ...base, witness: { logs: [{ keys: [logKey] }, { origin: "peer.example/sigil/issuance", keys: [logKey] }] } })).toEqual(["witness.logs.1.origin: log peer.example/sigil/issuance is listed twice"]);
    expect(issues({ ...base, witness: { name: "has space", logs: [{ keys: [logKey] }] } })).toEqual(["witness.name: must be a key name: no spaces, no '+'"]);
    expect(issues({ enabled: true, witness: { logs: [{ keys: [logKey] }] } })).toEqual(["witness: needs enabled: true and listen_address (a witness answers on the tiles listener)"]);
  });

  it("refuses one witness key under two spellings or two names, and witnessed logs the witness could not serve", () => {
    const issues = (input: unknown): string[] => transparencyLogSection.safeParse(input).error?.issues.map((i) => `${i.path.join(".")}: ${i.message}`) ?? [];
    const base = { enabled: true, listen_address: "127.0.0.1:0" };
    const { privateKey, publicKey } = generateKeyPairSync("ed25519");
    const w1 = createCosigner("w1.example", publicKey, (m) => sign(null, m, privateKey)).vkey;
    const w2 = createCosigner("w2.example", publicKey, (m) => sign(null, m, privateKey)).vkey;
    const [name, id, key] = [w1.slice(0, w1.indexOf("+")), w1.split("+")[1] as string, w1.slice(w1.indexOf("+", w1.indexOf("+") + 1) + 1)];
    const upper = `${name}+${id.toUpperCase()}+${key}`;
    expect(upper).not.toBe(w1);
    expect(issues({ ...base, witnesses: [{ url: "https://a.example", key: w1 }, { url: "https://b.example", key: upper }], witness_quorum: 2 })).toEqual([`witnesses.1.key: witness key w1.example+${id} is listed twice`]);
    expect(issues({ ...base, witnesses: [{ url: "https://a.example", key: w1 }, { url: "https://b.example", key: w2 }] })).toEqual([
      expect.stringMatching(/^witnesses\.1\.key: witness keys w1\.example\+[0-9a-f]{8} and w2\.example\+[0-9a-f]{8} share one public key/),
    ]);

    const logKey = generateNoteKey("peer.example/sigil/issuance").vkey;
    expect(issues({ ...base, witness: { logs: [{ keys: [logKey, logKey] }] } })).toEqual([expect.stringMatching(/^witness\.logs\.0\.keys\.1: keys 1 and 2 of log peer\.example\/sigil\/issuance are both peer\.example\/sigil\/issuance\+[0-9a-f]{8}/)]);
    expect(issues({ ...base, witness: { logs: [{ origin: "o".repeat(256), keys: [logKey] }] } })).toEqual(["witness.logs.0.origin: the origin of a witnessed log must be one line of 1 to 255 characters, got 256"]);
    expect(issues({ ...base, witness: { logs: [{ origin: "o".repeat(255), keys: [logKey] }] } })).toEqual([]);
    // add-checkpoint has its own, much smaller bucket.
    expect(transparencyLogSection.parse({ ...base, witness: { logs: [{ keys: [logKey] }] } }).witness).toMatchObject({ rate_limit_per_second: 2, rate_limit_burst: 20 });
  });

  it("makes a tiles listener only when the log is enabled and listen_address is set", () => {
    const log = createLogger({ level: "error", destination: { write: () => undefined } });
    const view = memoryTlogView();
    expect(tlogListenerService(undefined, () => view, log)).toBeUndefined();
    expect(tlogListenerService({ enabled: false, listen_address: "127.0.0.1:0" }, () => view, log)).toBeUndefined();
    expect(tlogListenerService({ enabled: true }, () => view, log)).toBeUndefined();
    expect(tlogListenerService({ enabled: true, listen_address: "127.0.0.1:0" }, () => view, log)?.name).toBe("tlog-listener");
  });
});
