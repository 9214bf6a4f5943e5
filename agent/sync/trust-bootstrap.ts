/**
 * How the agent trusts the server on first contact (SPIRE's trust bundle
 * bootstrap): roots from a file or an https URL, in PEM or SPIFFE bundle
 * format, or none at all with `insecure_bootstrap`. Used only while no bundle
 * is stored in `data_dir`.
 */
import { readFile } from "node:fs/promises";
import { parseSpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { SigilError } from "../../spiffe/errors.js";
import type { TrustDomain } from "../../spiffe/id.js";
import { decodePemCertificates } from "../../spiffe/pem.js";

/** The bootstrap settings of the agent config. */
export interface TrustBootstrapConfig {
  readonly trust_bundle_path?: string | undefined;
  readonly trust_bundle_url?: string | undefined;
  readonly trust_bundle_format: "pem" | "spiffe";
  readonly insecure_bootstrap?: boolean | undefined;
}

/** Where the first-contact roots came from. */
export type BootstrapTrust =
  | { readonly kind: "roots"; readonly roots: readonly Uint8Array[]; readonly source: string }
  | { readonly kind: "insecure" };

/** Injected I/O, for tests. */
export interface TrustBootstrapDeps {
  /** HTTP client (default `globalThis.fetch`, which validates certificates against the system's WebPKI roots). */
  readonly fetch?: (url: string) => Promise<{ ok: boolean; status: number; text(): Promise<string> }>;
  readonly readFile?: (path: string) => Promise<string>;
}

function bootstrapError(message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `bootstrap: ${message}`, cause === undefined ? undefined : { cause });
}

/**
 * Parses bootstrap bundle text: PEM certificates, or a SPIFFE bundle whose
 * X.509 authorities are used.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` (`bootstrap: /etc/b.pem: …`)
 */
export function parseBootstrapBundle(text: string, format: "pem" | "spiffe", trustDomain: TrustDomain, source: string): Uint8Array[] {
  let roots: Uint8Array[];
  try {
    roots = format === "pem" ? decodePemCertificates(text) : [...parseSpiffeBundle(text, trustDomain).bundle.x509Authorities];
  } catch (e) {
    throw bootstrapError(`${source} is not a ${format === "pem" ? "PEM certificate bundle" : "SPIFFE bundle"} (trust_bundle_format: ${format}): ${(e as Error).message}`, e);
  }
  if (roots.length === 0) throw bootstrapError(`${source} holds no X.509 authority`);
  return roots;
}

/**
 * Reads the first-contact trust from the configured source.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` when the file or URL cannot be read or parsed
 */
export async function loadBootstrapTrust(config: TrustBootstrapConfig, trustDomain: TrustDomain, deps: TrustBootstrapDeps = {}): Promise<BootstrapTrust> {
  if (config.trust_bundle_path !== undefined) {
    const p = config.trust_bundle_path;
    let text: string;
    try {
      text = await (deps.readFile ?? ((f: string) => readFile(f, "utf8")))(p);
    } catch (e) {
      throw bootstrapError(`cannot read trust_bundle_path ${p}: ${(e as Error).message}`, e);
    }
    return { kind: "roots", roots: parseBootstrapBundle(text, config.trust_bundle_format, trustDomain, p), source: p };
  }
  if (config.trust_bundle_url !== undefined) {
    const url = config.trust_bundle_url;
    if (!url.startsWith("https://")) throw bootstrapError(`trust_bundle_url ${url} must be an https:// URL`);
    const fetchFn = deps.fetch ?? ((u: string) => fetch(u, { redirect: "error" }));
    let text: string;
    try {
      const res = await fetchFn(url);
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      text = await res.text();
    } catch (e) {
      throw bootstrapError(`cannot fetch trust_bundle_url ${url}: ${(e as Error).message}`, e);
    }
    return { kind: "roots", roots: parseBootstrapBundle(text, config.trust_bundle_format, trustDomain, url), source: url };
  }
  if (config.insecure_bootstrap === true) return { kind: "insecure" };
  throw bootstrapError("none of trust_bundle_path, trust_bundle_url, insecure_bootstrap is set");
}
