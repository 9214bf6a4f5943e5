/**
 * A throwaway TLS PKI for local HTTPS test servers: a self-signed CA and a
 * serving certificate it signs (for 127.0.0.1 and localhost unless told),
 * made with the OpenSSL CLI (gate tests with `requireTool("openssl")`). Valid from now for
 * two days, since clients check validity against the real clock.
 */
import { spawnSync } from "node:child_process";
import { generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { isIP } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A CA and one serving certificate it issued, PEM. */
export interface ServingPki {
  /** The CA certificate clients trust. */
  readonly caPem: string;
  /** The server's certificate and key. */
  readonly certPem: string;
  readonly keyPem: string;
}

function openssl(dir: string, args: string[]): void {
  const r = spawnSync("openssl", args, { cwd: dir, encoding: "utf8" });
  if (r.status !== 0) throw new Error(`openssl ${args.join(" ")} failed: ${r.stderr}`);
}

/**
 * Makes a fresh CA and a serving certificate (P-256 keys) for `names`, each an
 * IP address or a DNS name; default `127.0.0.1` and `localhost`.
 */
export function createServingPki(commonName = "sigil test server", names: readonly string[] = ["127.0.0.1", "localhost"]): ServingPki {
  const dir = mkdtempSync(join(tmpdir(), "sigil-test-tls-"));
  try {
    const pem = (): string => generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    const caKey = pem();
    const keyPem = pem();
    writeFileSync(join(dir, "ca.key"), caKey);
    writeFileSync(join(dir, "leaf.key"), keyPem);
    writeFileSync(
      join(dir, "ext.cnf"),
      [
        "[req]",
        "distinguished_name = dn",
        "[dn]",
        "[ca]",
        "basicConstraints = critical,CA:TRUE",
        "keyUsage = critical,keyCertSign,cRLSign",
        "subjectKeyIdentifier = hash",
        "[leaf]",
        "basicConstraints = critical,CA:FALSE",
        "keyUsage = critical,digitalSignature",
        "extendedKeyUsage = serverAuth",
        `subjectAltName = ${names.map((n) => (isIP(n) === 0 ? `DNS:${n}` : `IP:${n}`)).join(",")}`,
        "",
      ].join("\n"),
    );
    const serial = (): string => `0x${randomBytes(16).toString("hex")}`;
    openssl(dir, ["req", "-x509", "-new", "-key", "ca.key", "-subj", `/O=Sigil tests/CN=${commonName} CA`, "-days", "2", "-set_serial", serial(), "-config", "ext.cnf", "-extensions", "ca", "-out", "ca.pem"]);
    openssl(dir, ["req", "-new", "-key", "leaf.key", "-subj", `/O=Sigil tests/CN=${commonName}`, "-config", "ext.cnf", "-out", "leaf.csr"]);
    openssl(dir, ["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", serial(), "-days", "2", "-extfile", "ext.cnf", "-extensions", "leaf", "-out", "leaf.pem"]);
    return { caPem: readFileSync(join(dir, "ca.pem"), "utf8"), certPem: readFileSync(join(dir, "leaf.pem"), "utf8"), keyPem };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
