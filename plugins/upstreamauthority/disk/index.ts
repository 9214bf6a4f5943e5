/**
 * `disk` UpstreamAuthority: a CA certificate and key on disk sign Sigil's
 * intermediate. The bundle carries `bundle_file_path`'s roots, or the upstream
 * certificate itself when it is self-signed.
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { z } from "zod";
import { SigilError } from "../../../spiffe/errors.js";
import { decodePemCertificates } from "../../../spiffe/pem.js";
import { createKeyObjectSigner } from "../../../spiffe/signer.js";
import { createIntermediateCa } from "../../../spiffe/x509/ca.js";
import type { MintedX509Ca, MintX509CaRequest, UpstreamAuthority, UpstreamAuthorityDeps } from "../types.js";
import { pluginHalf, type PluginDescriptor } from "../../descriptor.js";

/** Configuration of the disk upstream authority. */
export const diskUpstreamAuthorityConfigSchema = z.strictObject({
  cert_file_path: z.string().min(1).describe("PEM certificate of the upstream CA (first block), plus any intermediates up to the root."),
  key_file_path: z.string().min(1).describe("PEM PKCS#8 (or SEC1/PKCS#1) private key of the upstream CA."),
  bundle_file_path: z.string().min(1).optional().describe("PEM roots to publish; required when the upstream CA is not self-signed."),
});

/** Parsed configuration. */
export type DiskUpstreamAuthorityConfig = z.infer<typeof diskUpstreamAuthorityConfigSchema>;

function read(file: string, what: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (e) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `upstreamauthority(disk): cannot read ${what} ${file}: ${(e as Error).message}`, { cause: e });
  }
}

/** Creates the disk upstream authority, loading and checking the files once. */
export function createDiskUpstreamAuthority(config: DiskUpstreamAuthorityConfig): UpstreamAuthority {
  const chain = decodePemCertificates(read(config.cert_file_path, "cert_file_path"));
  const upstreamDer = chain[0];
  if (!upstreamDer) throw new SigilError("ERR_INVALID_ARGUMENT", `upstreamauthority(disk): ${config.cert_file_path} holds no certificate`);
  const upstream = new X509Certificate(upstreamDer);
  if (!upstream.ca) throw new SigilError("ERR_INVALID_ARGUMENT", `upstreamauthority(disk): ${config.cert_file_path} is not a CA certificate`);
  let key;
  try {
    key = createPrivateKey(read(config.key_file_path, "key_file_path"));
  } catch (e) {
    if (e instanceof SigilError) throw e;
    throw new SigilError("ERR_INVALID_ARGUMENT", `upstreamauthority(disk): ${config.key_file_path} is not a private key`, { cause: e });
  }
  if (!upstream.checkPrivateKey(key)) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `upstreamauthority(disk): ${config.key_file_path} does not match the certificate in ${config.cert_file_path}`);
  }
  const selfSigned = upstream.checkIssued(upstream) && upstream.verify(upstream.publicKey);
  let roots: Uint8Array[];
  if (config.bundle_file_path) roots = decodePemCertificates(read(config.bundle_file_path, "bundle_file_path"));
  else if (selfSigned) roots = [upstreamDer];
  else throw new SigilError("ERR_INVALID_ARGUMENT", "upstreamauthority(disk): bundle_file_path is required when the upstream CA is not self-signed");
  const intermediates = selfSigned ? [] : chain.filter((d) => !roots.some((r) => Buffer.from(r).equals(Buffer.from(d))));
  const signer = createKeyObjectSigner(key, "upstream");
  const upstreamNotAfter = new Date(upstream.validTo);

  return {
    name: "disk",
    async mintX509Ca(req: MintX509CaRequest): Promise<MintedX509Ca> {
      const notAfter = new Date(Math.min(req.notAfter.getTime(), upstreamNotAfter.getTime()));
      const certDer = createIntermediateCa({
        trustDomain: req.trustDomain,
        subjectPublicKey: req.publicKey,
        issuerSigner: signer,
        issuerCertDer: upstreamDer,
        notBefore: req.notBefore,
        notAfter,
        ...(req.subject ? { subject: req.subject } : {}),
      });
      return { certDer, intermediateDers: intermediates, rootDers: roots, notAfter };
    },
  };
}

/** The `disk` UpstreamAuthority in the plugin catalog. */
export const diskUpstreamAuthorityPlugin: PluginDescriptor<"UpstreamAuthority", UpstreamAuthorityDeps, UpstreamAuthority> = {
  type: "UpstreamAuthority",
  name: "disk",
  server: pluginHalf({
    description: "Upstream CA from files on disk.",
    configSchema: diskUpstreamAuthorityConfigSchema,
    create: (config, _deps: UpstreamAuthorityDeps) => createDiskUpstreamAuthority(config),
  }),
};
