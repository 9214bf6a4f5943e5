/**
 * OpenSSL as an independent peer for name constraints: the same chains, with
 * nameConstraints critical and not, get the same verdict from
 * `openssl verify` as from `verifyX509Svid`, and a CA whose nameConstraints
 * OpenSSL itself encoded is decoded and enforced by Sigil. Gated by
 * `requireTool` like test/interop/openssl.test.ts.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { X509Bundle } from "../../spiffe/bundle/x509-bundle.js";
import { isSigilError } from "../../spiffe/errors.js";
import { parseTrustDomain } from "../../spiffe/id.js";
import { decodePemCertificates, toPem } from "../../spiffe/pem.js";
import { decodeCertificate } from "../../spiffe/x509/decode-certificate.js";
import { StaticX509BundleSource } from "../../spiffe/x509/static-bundle-source.js";
import { verifyX509Svid } from "../../spiffe/x509/verify.js";
import { craftCertificate, craftIntermediate, makeRoot } from "../fixtures/x509/pki.js";
import { altNamesExtension, nameConstraintsExtension, type ConstraintSpec } from "../fixtures/x509/name-constraints.js";
import { requireTool } from "../support/tools.js";

const haveOpenssl = requireTool("openssl", ["version"], "name-constraint interop tests");

// openssl verify checks against the wall clock, so these chains are valid around now.
const NOW = new Date();
const CA_WINDOW = { notBefore: new Date(NOW.getTime() - 3600_000), notAfter: new Date(NOW.getTime() + 7 * 86400_000) };
const LEAF_WINDOW = { notBefore: new Date(NOW.getTime() - 600_000), notAfter: new Date(NOW.getTime() + 3600_000) };

function openssl(args: readonly string[], cwd: string): { status: number; out: string } {
  const r = spawnSync("openssl", args, { cwd, encoding: "utf8" });
  return { status: r.status ?? -1, out: `${r.stdout}${r.stderr}` };
}

describe.skipIf(!haveOpenssl)("OpenSSL interop (name constraints)", () => {
  const dir = mkdtempSync(path.join(tmpdir(), "sigil-openssl-nc-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  const write = (name: string, ders: readonly Uint8Array[]): string => {
    const file = `${++n}-${name}.pem`;
    writeFileSync(path.join(dir, file), ders.map((d) => toPem("CERTIFICATE", d)).join(""));
    return file;
  };
  /** "OK" or the verify error line openssl prints. */
  const opensslVerdict = (rootDer: Uint8Array, leafDer: Uint8Array, intermediates: readonly Uint8Array[]): string => {
    const r = openssl(["verify", "-CAfile", write("root", [rootDer]), "-untrusted", write("inter", intermediates), write("leaf", [leafDer])], dir);
    if (r.status === 0 && /: OK$/m.test(r.out)) return "OK";
    return /error \d+ at \d+ depth lookup: (.*)/.exec(r.out)?.[1] ?? r.out;
  };
  const sigilVerdict = (chain: readonly Uint8Array[], source: StaticX509BundleSource): string => {
    try {
      verifyX509Svid(chain, source, { now: new Date() });
      return "OK";
    } catch (e) {
      if (isSigilError(e, "ERR_X509_CHAIN_INVALID")) return e.message;
      throw e;
    }
  };

  describe.each([false, true])("Sigil-encoded nameConstraints, critical=%s", (critical) => {
    it.each([
      { name: "permitted URI host", spec: { permitted: ["uri:example.org"] }, sans: [], openssl: "OK", sigil: "OK" },
      { name: "URI outside the permitted host", spec: { permitted: ["uri:other.org"] }, sans: [], openssl: "permitted subtree violation", sigil: /URI SAN "spiffe:\/\/example\.org\/w" is not permitted/ },
      { name: "leading dot is subdomains only", spec: { permitted: ["uri:.example.org"] }, sans: [], openssl: "permitted subtree violation", sigil: /URI SAN "spiffe:\/\/example\.org\/w" is not permitted/ },
      { name: "excluded URI host", spec: { excluded: ["uri:example.org"] }, sans: [], openssl: "excluded subtree violation", sigil: /URI SAN "spiffe:\/\/example\.org\/w" is excluded/ },
      { name: "DNS subdomain permitted", spec: { permitted: ["dns:example.org"] }, sans: ["dns:api.example.org"], openssl: "OK", sigil: "OK" },
      { name: "DNS outside the permitted domain", spec: { permitted: ["dns:example.org"] }, sans: ["dns:api.other.org"], openssl: "permitted subtree violation", sigil: /DNS SAN "api\.other\.org" is not permitted/ },
      { name: "DNS in an excluded domain", spec: { excluded: ["dns:internal.example.org"] }, sans: ["dns:db.internal.example.org"], openssl: "excluded subtree violation", sigil: /DNS SAN "db\.internal\.example\.org" is excluded/ },
      { name: "IP outside the permitted range", spec: { permitted: ["ip:10.0.0.0/8"] }, sans: ["ip:192.168.0.1"], openssl: "permitted subtree violation", sigil: /IP SAN "192\.168\.0\.1" is not permitted/ },
    ])("$name: openssl $openssl, Sigil agrees", ({ spec, sans, openssl: expected, sigil }) => {
      const root = makeRoot("example.org", CA_WINDOW);
      const ca = craftIntermediate(root, { ...CA_WINDOW, extraExtensions: [nameConstraintsExtension({ ...(spec as ConstraintSpec), critical })] });
      const leaf = craftCertificate(ca, { ...LEAF_WINDOW, noSan: true, extraExtensions: [altNamesExtension(["uri:spiffe://example.org/w", ...sans])] });
      expect(opensslVerdict(root.der, leaf.der, [ca.der])).toBe(expected);
      const verdict = sigilVerdict([leaf.der, ca.der], new StaticX509BundleSource([new X509Bundle(root.td, [root.der])]));
      if (sigil === "OK") expect(verdict).toBe("OK");
      else expect(verdict).toMatch(sigil);
    });
  });

  describe("nameConstraints encoded by openssl", () => {
    const conf = (name: string, lines: readonly string[]): string => {
      writeFileSync(path.join(dir, name), `${lines.join("\n")}\n`);
      return name;
    };
    const ecKey = (name: string): string => {
      expect(openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", name], dir).status).toBe(0);
      return name;
    };
    const readPem = (name: string): Uint8Array[] => decodePemCertificates(readFileSync(path.join(dir, name), "utf8"));
    /** An openssl root for example.org with the given nameConstraints value, and an openssl leaf under it. */
    const opensslChain = (nameConstraints: string): { root: string; leaf: string } => {
      const rootKey = ecKey(`root-${++n}.key`);
      const root = `root-${n}.pem`;
      const r = openssl(
        ["req", "-x509", "-new", "-key", rootKey, "-days", "2", "-subj", `/O=openssl/CN=root ${n}`, "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-addext", "subjectAltName=URI:spiffe://example.org", "-addext", `nameConstraints=${nameConstraints}`, "-out", root],
        dir,
      );
      expect(r.status, r.out).toBe(0);
      const leafKey = ecKey(`leaf-${n}.key`);
      const csr = `leaf-${n}.csr`;
      expect(openssl(["req", "-new", "-key", leafKey, "-subj", `/O=openssl/CN=leaf ${n}`, "-out", csr], dir).status).toBe(0);
      const leaf = `leaf-${n}.pem`;
      const ext = conf(`leaf-${n}.ext`, [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment,keyAgreement",
        "extendedKeyUsage=serverAuth,clientAuth",
        "subjectAltName=URI:spiffe://example.org/openssl-workload,DNS:api.example.org",
      ]);
      const s = openssl(["x509", "-req", "-in", csr, "-CA", root, "-CAkey", rootKey, "-set_serial", String(2000 + n), "-days", "1", "-extfile", ext, "-out", leaf], dir);
      expect(s.status, s.out).toBe(0);
      return { root, leaf };
    };
    const trust = (root: string): StaticX509BundleSource => new StaticX509BundleSource([new X509Bundle(parseTrustDomain("example.org"), readPem(root))]);

    it.each([
      { nc: "permitted;URI:example.org,permitted;DNS:example.org", sigil: "OK" },
      { nc: "critical,permitted;URI:example.org,excluded;DNS:api.example.org", sigil: /DNS SAN "api\.example\.org" is excluded by the name constraint "api\.example\.org" of the example\.org authority/ },
      { nc: "permitted;URI:other.org", sigil: /URI SAN "spiffe:\/\/example\.org\/openssl-workload" is not permitted by the name constraints of the example\.org authority/ },
      { nc: "critical,permitted;URI:.example.org", sigil: /URI SAN "spiffe:\/\/example\.org\/openssl-workload" is not permitted/ },
    ])("nameConstraints=$nc: openssl and Sigil agree", ({ nc, sigil }) => {
      const chain = opensslChain(nc);
      const [rootDer] = readPem(chain.root);
      expect(decodeCertificate(rootDer as Uint8Array).nameConstraints?.critical).toBe(nc.startsWith("critical"));
      const osslOk = openssl(["verify", "-CAfile", chain.root, chain.leaf], dir).status === 0;
      const verdict = sigilVerdict(readPem(chain.leaf), trust(chain.root));
      expect(osslOk).toBe(sigil === "OK");
      if (sigil === "OK") expect(verdict).toBe("OK");
      else expect(verdict).toMatch(sigil);
    });
  });
});
