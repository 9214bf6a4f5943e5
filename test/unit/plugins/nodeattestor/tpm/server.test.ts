import { createPublicKey } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { formatSelector } from "../../../../../common/selector.js";
import { ekPubHash } from "../../../../../plugins/nodeattestor/tpm/ek.js";
import { parseTpmChallenge } from "../../../../../plugins/nodeattestor/tpm/payload.js";
import { createTpmServerAttestor, tpmServerConfigSchema } from "../../../../../plugins/nodeattestor/tpm/server.js";
import { TPMA_OBJECT } from "../../../../../plugins/nodeattestor/tpm/tpm2/structures.js";
import type { ChallengeFn, ServerNodeAttestor } from "../../../../../plugins/nodeattestor/types.js";
import { isSigilError, type ErrorCode } from "../../../../../spiffe/errors.js";
import { parseTrustDomain } from "../../../../../spiffe/id.js";
import { createSoftTpm, softPcrValue, type SoftAnswerOptions, type SoftTpm } from "../../../../support/soft-tpm.js";
import { createTestManufacturerCa, issueEkCertificate } from "../../../../support/swtpm.js";

const td = parseTrustDomain("example.org");
const dir = mkdtempSync(join(tmpdir(), "sigil-tpm-unit-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function server(config: unknown): ServerNodeAttestor {
  return createTpmServerAttestor(tpmServerConfigSchema.parse(config), { trustDomain: td });
}

function answering(tpm: SoftTpm, opts?: SoftAnswerOptions): ChallengeFn {
  return async (c) => tpm.answer(c, opts);
}

async function refusal(p: Promise<unknown>, code: ErrorCode, message: RegExp): Promise<void> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(isSigilError(e), String(e)).toBe(true);
  if (!isSigilError(e)) return;
  expect(e.code).toBe(code);
  expect(e.message).toMatch(message);
}

function pem(der: Uint8Array): string {
  return createPublicKey({ key: Buffer.from(der), format: "der", type: "spki" }).export({ format: "pem", type: "spki" }).toString();
}

describe.each(["rsa", "ecc"] as const)("tpm server half, %s EK", (type) => {
  const tpm = createSoftTpm(type);
  const hash = ekPubHash(tpm.ekKey);

  it("attests an allow-listed EK: agent ID from the EK hash, selectors for the EK and the quoted PCRs; the same TPM again gets the same ID", async () => {
    const s = server({ ek_hashes: [hash.toUpperCase()] });
    const r = await s.attest(tpm.payload(), answering(tpm));
    expect(r.agentId.toString()).toBe(`spiffe://example.org/spire/agent/tpm/${hash}`);
    expect(r.canReattest).toBe(true);
    const sels = r.selectors.map(formatSelector);
    expect(sels).toContain(`tpm:ek-pubhash:${hash}`);
    for (let i = 0; i <= 7; i++) expect(sels).toContain(`tpm:pcr:sha256:${i}:${softPcrValue("sha256", i)}`);
    const again = await s.attest(tpm.payload(), answering(tpm));
    expect(again.agentId.toString()).toBe(r.agentId.toString());
    expect(s.issuesAgentId?.(r.agentId)).toBe(true);
  });

  it("refuses an EK not in the allow-list, before any challenge", async () => {
    let asked = false;
    await refusal(
      server({ ek_hashes: ["00".repeat(32)] }).attest(tpm.payload(), async (c) => ((asked = true), tpm.answer(c))),
      "ERR_PERMISSION_DENIED",
      new RegExp(`EK ${hash} is not in the EK hash allow-list`),
    );
    expect(asked).toBe(false);
  });

  it("refuses another TPM answering (it cannot activate the credential)", async () => {
    const other = createSoftTpm(type);
    await refusal(server({ ek_hashes: [hash] }).attest(tpm.payload(), answering(other)), "ERR_PERMISSION_DENIED", /did not activate the credential/);
  });

  it("refuses a second TPM claiming this TPM's EK with its own AK", async () => {
    const impostor = createSoftTpm(type, { claimEkOf: tpm });
    await refusal(server({ ek_hashes: [hash] }).attest(impostor.payload(), answering(impostor)), "ERR_PERMISSION_DENIED", /did not activate the credential/);
  });

  it("refuses a replayed answer and a quote over an old nonce", async () => {
    const s = server({ ek_hashes: [hash] });
    let captured: Uint8Array | undefined;
    await s.attest(tpm.payload(), async (c) => (captured = tpm.answer(c)));
    await refusal(
      s.attest(tpm.payload(), async () => captured as Uint8Array),
      "ERR_PERMISSION_DENIED",
      /did not activate the credential/,
    );
    // The secret activated afresh, but the quote carries the earlier nonce.
    let oldNonce: Uint8Array | undefined;
    await s.attest(tpm.payload(), async (c) => ((oldNonce = parseTpmChallenge(c).nonce), tpm.answer(c)));
    await refusal(s.attest(tpm.payload(), answering(tpm, { nonce: oldNonce as Uint8Array })), "ERR_PERMISSION_DENIED", /not qualified with this attempt's nonce/);
  });

  it("refuses PCR values that do not match the policy, and reported values that are not the quoted ones", async () => {
    const s = server({ ek_hashes: [hash], pcr_policy: { sha256: { "7": softPcrValue("sha256", 7) }, sha1: { "0": softPcrValue("sha1", 0) } } });
    const ok = await s.attest(tpm.payload(), answering(tpm));
    expect(ok.selectors.map(formatSelector)).toEqual(expect.arrayContaining([`tpm:pcr:sha256:7:${softPcrValue("sha256", 7)}`, `tpm:pcr:sha1:0:${softPcrValue("sha1", 0)}`]));
    const bad = "ab".repeat(32);
    await refusal(s.attest(tpm.payload(), answering(tpm, { pcrs: { sha256: { 7: bad } } })), "ERR_PERMISSION_DENIED", new RegExp(`sha256 PCR 7 is ${bad}, but the PCR policy requires`));
    await refusal(
      s.attest(tpm.payload(), answering(tpm, { reportedPcrs: { sha256: { "7": softPcrValue("sha256", 7) }, sha1: { "0": "cd".repeat(20) } } })),
      "ERR_PERMISSION_DENIED",
      /do not match the quote's PCR digest/,
    );
  });

  it("refuses an AK that is not a restricted signing key bound to the TPM", async () => {
    const loose = createSoftTpm(type, { akAttributes: TPMA_OBJECT.sign | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.sensitiveDataOrigin });
    await refusal(server({ ek_hashes: [ekPubHash(loose.ekKey)] }).attest(loose.payload(), answering(loose)), "ERR_PERMISSION_DENIED", /the AK lacks the attributes fixedTPM, fixedParent, restricted/);
  });

  it("accepts an EK certificate from a configured manufacturer CA (issuer and serial selectors) and refuses one from another CA or none", async () => {
    const ca = await createTestManufacturerCa();
    const rogue = await createTestManufacturerCa("Rogue CA");
    const caPath = join(dir, `ca-${type}.pem`);
    writeFileSync(caPath, ca.certPem);
    const ekPem = pem(Buffer.from(tpm.ekKey.export({ format: "der", type: "spki" })));
    const cert = await issueEkCertificate(ca, ekPem, "0a1b2c3d");
    const s = server({ ek_ca_certificates_path: caPath });
    const r = await s.attest(tpm.payload(cert), answering(tpm));
    expect(r.selectors.map(formatSelector)).toEqual(expect.arrayContaining([`tpm:ek-cert-issuer:O=Sigil Test TPM Manufacturer,CN=Test EK Root CA`, "tpm:ek-cert-serial:a1b2c3d"]));
    await refusal(s.attest(tpm.payload(await issueEkCertificate(rogue, ekPem)), answering(tpm)), "ERR_PERMISSION_DENIED", /not signed by any configured EK CA certificate/);
    await refusal(s.attest(tpm.payload(), answering(tpm)), "ERR_PERMISSION_DENIED", /sent no EK certificate, and plugins\.NodeAttestor\.tpm\.require_ek_certificate is true/);
    // A certificate for another key than the EK sent.
    const other = createSoftTpm(type);
    await refusal(s.attest(other.payload(cert), answering(other)), "ERR_PERMISSION_DENIED", /certifies another public key than the EK's/);
    // Without require_ek_certificate, a listed hash is enough.
    const either = server({ ek_ca_certificates_path: caPath, ek_hashes: [hash], require_ek_certificate: false });
    expect((await either.attest(tpm.payload(), answering(tpm))).agentId.toString()).toContain(hash);
  });
});

describe("tpm server config", () => {
  it("names the keys when neither CAs nor hashes are configured, or a hash or PCR value is malformed", () => {
    const issues = (c: unknown) => tpmServerConfigSchema.safeParse(c).error?.issues.map((i) => `${i.path.join(".")}: ${i.message}`) ?? [];
    expect(issues({})).toEqual([expect.stringMatching(/ek_ca_certificates_path.*ek_hashes or ek_hashes_path/)]);
    expect(issues({ ek_hashes: ["xyz"] })).toEqual([expect.stringMatching(/^ek_hashes\.0: is not 64 hex digits/)]);
    expect(issues({ ek_hashes: ["00".repeat(32)], require_ek_certificate: true })).toEqual([expect.stringMatching(/^require_ek_certificate: is true but ek_ca_certificates_path is not set/)]);
    expect(issues({ ek_hashes: ["00".repeat(32)], pcr_policy: { sha256: { "24": "00".repeat(32) } } })[0]).toMatch(/^pcr_policy\.sha256\.24: is not a PCR index/);
    expect(issues({ ek_hashes: ["00".repeat(32)], pcr_policy: { sha256: { "7": "00" } } })[0]).toMatch(/^pcr_policy\.sha256\.7: is not 64 hex digits/);
  });

  it("reads ek_hashes_path again when it changes, and names the key for a bad line", async () => {
    const tpm = createSoftTpm("ecc");
    const file = join(dir, "hashes.txt");
    writeFileSync(file, "# enrolled\n");
    const s = server({ ek_hashes_path: file });
    await refusal(s.attest(tpm.payload(), answering(tpm)), "ERR_PERMISSION_DENIED", /not in the EK hash allow-list/);
    writeFileSync(file, `# enrolled\n${ekPubHash(tpm.ekKey)}  # node-1\n`);
    expect((await s.attest(tpm.payload(), answering(tpm))).agentId.toString()).toContain(ekPubHash(tpm.ekKey));
    writeFileSync(file, "nope\n");
    expect(() => server({ ek_hashes_path: file })).toThrow(/plugins\.NodeAttestor\.tpm\.ek_hashes_path: .*line 1 is not 64 hex digits/);
    expect(() => server({ ek_ca_certificates_path: join(dir, "missing.pem") })).toThrow(/plugins\.NodeAttestor\.tpm\.ek_ca_certificates_path: .*ENOENT/);
  });
});
