import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { audit, createLogger, redactSecrets, scrubString, subsystemLogger, type Logger } from "../../../common/log.js";

const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
const PEM = privateKey.export({ type: "pkcs8", format: "pem" }).toString();
const PEM_BODY = PEM.split("\n")[1] as string;
const JWT = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy93ZWIifQ.c2lnbmF0dXJlLWJ5dGVz";
const JOIN_TOKEN = "7f0c2c1e-5b7e-4c51-9d6a-2f9e3c1b8a40";

function capture(format: "json" | "text" = "json"): { log: Logger; lines: string[]; text: () => string } {
  const lines: string[] = [];
  const log = createLogger({ level: "debug", format, destination: { write: (l) => void lines.push(l) } });
  return { log, lines, text: () => lines.join("") };
}

function expectClean(out: string): void {
  expect(out).not.toContain(PEM_BODY);
  expect(out).not.toContain("BEGIN PRIVATE KEY");
  expect(out).not.toContain(JWT);
  expect(out).not.toContain(JWT.split(".")[1] as string);
  expect(out).not.toContain(JOIN_TOKEN);
}

describe("log redaction", () => {
  it("never prints a PEM private key, in fields, nested fields, messages or printf arguments", () => {
    const { log, text } = capture();
    log.info({ key: PEM, nested: { a: [{ pem: PEM }] } }, "loaded key %s", PEM);
    log.info("printf %o %j", { blob: PEM }, [PEM]);
    log.warn(`inline ${PEM}`);
    expectClean(text());
    expect(text()).toContain("[REDACTED PRIVATE KEY]");
  });

  it("blanks sensitive keys at any depth, in any spelling", () => {
    const { log, lines } = capture();
    log.info(
      {
        join_token: JOIN_TOKEN,
        request: { joinToken: JOIN_TOKEN, metadata: { authorization: `Bearer ${JOIN_TOKEN}` } },
        deep: { a: { b: { c: { private_key: "k", password: JOIN_TOKEN } } } },
        svid: { cert: "c", key: PEM },
      },
      "attest",
    );
    expectClean(lines.join(""));
    const rec = JSON.parse(lines[0] as string) as Record<string, any>;
    expect(rec["join_token"]).toBe("[REDACTED]");
    expect(rec["request"].joinToken).toBe("[REDACTED]");
    expect(rec["request"].metadata.authorization).toBe("[REDACTED]");
    expect(rec["deep"].a.b.c).toEqual({ private_key: "[REDACTED]", password: "[REDACTED]" });
    expect(rec["svid"]).toBe("[REDACTED]");
  });

  it("scrubs JWTs and bearer credentials inside ordinary strings", () => {
    const { log, text } = capture();
    log.info({ header: `Bearer ${JOIN_TOKEN}`, note: `got ${JWT} from client` }, `token was ${JWT}`);
    expectClean(text());
    expect(text()).toContain("[REDACTED JWT]");
  });

  it("scrubs error messages and stacks, including the message pino lifts into msg", () => {
    const { log, text } = capture();
    log.error(new Error(`cannot parse ${PEM}`));
    log.error({ err: new Error(`bad token ${JWT}`) });
    log.error({ err: new Error(`bad token ${JWT}`) }, "handshake failed");
    expectClean(text());
    expect(text()).toContain("cannot parse [REDACTED PRIVATE KEY]");
  });

  it("redacts child-logger bindings", () => {
    const { log, text } = capture();
    subsystemLogger(log, "node_attestor", { join_token: JOIN_TOKEN }).info("attested");
    log.child({ token: JOIN_TOKEN }).info("child");
    expectClean(text());
    expect(text()).toContain('"subsystem_name":"node_attestor"');
  });

  it("redacts in text format too", () => {
    const { log, text } = capture("text");
    log.info({ join_token: JOIN_TOKEN, key: PEM }, "hello");
    expectClean(text());
  });

  it("redacts audit details", () => {
    const { log, text } = capture();
    audit(log, { caller: { uid: 0 }, method: "/sigil.admin.v1.Token/Create", status: "success", details: { join_token: JOIN_TOKEN } });
    expectClean(text());
  });

  it("keeps non-secret values and shares unchanged objects", () => {
    const value = { spiffe_id: "spiffe://example.org/web", serial: "01ab", nested: { ttl: 3600 } };
    expect(redactSecrets(value)).toBe(value);
    expect(scrubString("plain text")).toBe("plain text");
    const { log, lines } = capture();
    log.info(value, "issued");
    expect(JSON.parse(lines[0] as string)).toMatchObject(value);
  });

  it("survives circular objects", () => {
    const a: Record<string, unknown> = { token: JOIN_TOKEN };
    a["self"] = a;
    const { log, text } = capture();
    log.info({ a }, "circular");
    expectClean(text());
  });
});
