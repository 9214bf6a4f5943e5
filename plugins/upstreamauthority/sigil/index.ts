/**
 * `sigil` UpstreamAuthority: nested Sigil. A child server gets its X.509 CA
 * from a parent Sigil server of the same trust domain. At each CA preparation
 * it fetches its own X509-SVID (whose registration entry on the parent is
 * marked `downstream`) from a local agent's Workload API, calls the parent's
 * `DownstreamAPI.NewDownstreamX509CA` at `server_address` presenting that
 * SVID, verifying the parent as `spiffe://<td>/spire/server` against the
 * bundle from the same Workload API answer, and uses the returned
 * intermediate as its CA: the child's SVIDs chain parent root → child
 * intermediate → leaf, and its bundle carries the parent's roots.
 *
 * The answer is checked before it is used: the intermediate must be a CA
 * (CA:true, one URI SAN `spiffe://<td>`) for this server's key, chaining
 * through any intermediates sent with it to a root of the Workload API
 * bundle; and the roots the child publishes are that bundle's, never the
 * parent's answer taken verbatim (a peer holding some server SVID of the
 * trust domain cannot slip in a foreign root).
 *
 * With `spiffe_id` set, that SVID is presented; without it, each X509-SVID of
 * the trust domain is tried in turn until the parent accepts one.
 *
 * Renewal is the CA manager's: it prepares the next authority (and so calls
 * this plugin again) at half the current one's life, which ends at the
 * intermediate's notAfter (the parent caps it at `server.downstream_ca_ttl`).
 * Between renewals the plugin watches the Workload API's X.509 bundle
 * (`watchRoots`): a parent's new or withdrawn root reaches the child's bundle
 * at once, and a CA whose root the parent withdrew is replaced at once.
 */
import { X509Certificate, type KeyObject } from "node:crypto";
import { credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { z } from "zod";
import { serverSpiffeId } from "../../../common/reserved-ids.js";
import { grpcStatusForCode } from "../../../common/rpc/status.js";
import { createUnaryClient } from "../../../common/rpc/unary-client.js";
import { DownstreamAPI } from "../../../proto/gen/sigil/agent/v1/downstream_pb.js";
import { CALLER_CHAIN_METADATA_KEY } from "../../../server/api/presented-chain.js";
import { isSigilError, SigilError, type ErrorCode } from "../../../spiffe/errors.js";
import { parseSpiffeId, type TrustDomain } from "../../../spiffe/id.js";
import { encodePemCertificates, encodePemPrivateKey } from "../../../spiffe/pem.js";
import { authorizeId } from "../../../spiffe/tls/authorizer.js";
import { chainFromPeerCertificate, verifyPeerSvid } from "../../../spiffe/tls/verify-peer.js";
import { createWorkloadApiClient, type WorkloadApiClient } from "../../../spiffe/workloadapi/client.js";
import type { X509Context, X509Svid } from "../../../spiffe/workloadapi/x509-context.js";
import { pluginHalf, type PluginDescriptor } from "../../descriptor.js";
import type { MintedX509Ca, MintX509CaRequest, UpstreamAuthority, UpstreamAuthorityDeps } from "../types.js";

/** How long fetching the SVID, and the call to the parent, may each take. */
const CALL_TIMEOUT_MS = 30_000;

/** Configuration of the sigil upstream authority. */
export const sigilUpstreamAuthorityConfigSchema = z.strictObject({
  server_address: z
    .string()
    .regex(/^[^\s:]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$/, "must be host:port")
    .describe("`host:port` of the parent Sigil server's agent API listener."),
  workload_api_socket: z
    .string()
    .min(1)
    .describe("Unix socket path of the local agent's Workload API (an agent of the parent), where this server fetches its downstream X509-SVID."),
  spiffe_id: z
    .string()
    .refine((v) => {
      try {
        parseSpiffeId(v);
        return true;
      } catch {
        return false;
      }
    }, "must be a SPIFFE ID")
    .optional()
    .describe("SPIFFE ID of this server's entry marked `downstream` on the parent: the X509-SVID presented when the Workload API gives several. Without it, each X509-SVID of the trust domain is tried in turn until the parent accepts one."),
});

/** Parsed configuration. */
export type SigilUpstreamAuthorityConfig = z.infer<typeof sigilUpstreamAuthorityConfigSchema>;

/** The gRPC status code of a failed call, or undefined for another error. */
function grpcCodeOf(e: unknown): number | undefined {
  const code = (e as Partial<ServiceError> | undefined)?.code;
  return typeof code === "number" ? code : undefined;
}

/** Sigil error codes a parent's refusal keeps (the rest become ERR_UNAVAILABLE: the parent could not be used). */
const KEPT_CODES: readonly ErrorCode[] = ["ERR_PERMISSION_DENIED", "ERR_INVALID_ARGUMENT", "ERR_RESOURCE_EXHAUSTED"];

/** Creates the sigil upstream authority. */
export function createSigilUpstreamAuthority(config: SigilUpstreamAuthorityConfig): UpstreamAuthority {
  const socket = config.workload_api_socket.startsWith("unix:") ? config.workload_api_socket : `unix://${config.workload_api_socket}`;
  const prefix = "upstreamauthority(sigil)";

  async function fetchContext(): Promise<X509Context> {
    const client = createWorkloadApiClient({ address: socket });
    try {
      return await client.fetchX509Context({ signal: AbortSignal.timeout(CALL_TIMEOUT_MS) });
    } catch (e) {
      throw new SigilError("ERR_UNAVAILABLE", `${prefix}: cannot fetch this server's X509-SVID from the Workload API at ${config.workload_api_socket}: ${(e as Error).message}`, { cause: e });
    } finally {
      client.close();
    }
  }

  /** Calls the parent presenting `svid`, and checks its answer against the Workload API bundle (`rootDers`). */
  async function askParent(svid: X509Svid, ctx: X509Context, rootDers: readonly Uint8Array[], req: MintX509CaRequest): Promise<MintedX509Ca> {
    const td = req.trustDomain;
    const parentId = serverSpiffeId(td);
    const creds = credentials.createSsl(
      Buffer.from(encodePemCertificates(rootDers)),
      Buffer.from(encodePemPrivateKey(new Uint8Array(svid.privateKey.export({ format: "der", type: "pkcs8" })))),
      Buffer.from(encodePemCertificates(svid.certificateDers)),
      {
        // The parent must be the server of this trust domain (OpenSSL has checked the chain against the same roots).
        checkServerIdentity: (_host, cert) => {
          try {
            verifyPeerSvid(chainFromPeerCertificate(cert), ctx, authorizeId(parentId));
            return undefined;
          } catch (e) {
            return new Error(`${prefix}: the parent at ${config.server_address} is not ${parentId.toString()}: ${(e as Error).message}`);
          }
        },
      },
    );
    const api = createUnaryClient(DownstreamAPI, config.server_address, creds);
    // The TLS layer hands the parent the leaf only: the intermediates let a parent whose own CA did not sign this SVID (HA servers under an upstream authority) build the path.
    const metadata = new Metadata();
    for (const der of svid.certificateDers.slice(1)) metadata.add(CALLER_CHAIN_METADATA_KEY, Buffer.from(der));
    let res;
    try {
      const ttlSeconds = Math.max(1, Math.floor((req.notAfter.getTime() - Date.now()) / 1000));
      res = await api.newDownstreamX509CA(
        { key: { case: "publicKey", value: new Uint8Array(req.publicKey.export({ format: "der", type: "spki" })) }, preferredTtl: BigInt(ttlSeconds) },
        { deadlineMs: CALL_TIMEOUT_MS, metadata },
      );
    } catch (e) {
      const grpcCode = grpcCodeOf(e);
      const code = KEPT_CODES.find((c) => grpcStatusForCode(c) === grpcCode) ?? "ERR_UNAVAILABLE";
      const details = (e as Partial<ServiceError>).details ?? (e as Error).message;
      throw new SigilError(code, `${prefix}: the parent at ${config.server_address} refused NewDownstreamX509CA for ${svid.id.toString()}: ${details}`, { cause: e });
    } finally {
      api.close();
    }
    const [certDer, ...intermediateDers] = res.caCertChain;
    if (!certDer) throw new SigilError("ERR_UNAVAILABLE", `${prefix}: the parent at ${config.server_address} answered without a CA certificate`);
    const problem = answerProblem(certDer, intermediateDers, rootDers, req.publicKey, td);
    if (problem) throw new SigilError("ERR_UNAVAILABLE", `${prefix}: the parent at ${config.server_address} answered with ${problem}; not used`);
    return { certDer, intermediateDers, rootDers, notAfter: new Date(new X509Certificate(certDer).validTo) };
  }

  let watchClient: WorkloadApiClient | undefined;

  return {
    name: "sigil",
    async mintX509Ca(req: MintX509CaRequest): Promise<MintedX509Ca> {
      const ctx = await fetchContext();
      const td = req.trustDomain;
      const candidates = ctx.svids.filter((s) => (config.spiffe_id === undefined ? s.id.trustDomain.equals(td) : s.id.toString() === config.spiffe_id));
      if (candidates.length === 0) {
        const wanted = config.spiffe_id ?? `an X509-SVID of ${td.name}`;
        throw new SigilError("ERR_FAILED_PRECONDITION", `${prefix}: the Workload API at ${config.workload_api_socket} gave no ${wanted} (got ${ctx.svids.map((s) => s.id.toString()).join(", ")})`);
      }
      const bundle = ctx.bundles.get(td.name);
      if (!bundle || bundle.authorityDers.length === 0) throw new SigilError("ERR_FAILED_PRECONDITION", `${prefix}: the Workload API gave no X.509 bundle of ${td.name}`);
      const refusals: string[] = [];
      for (const [i, svid] of candidates.entries()) {
        try {
          return await askParent(svid, ctx, bundle.authorityDers, req);
        } catch (e) {
          // Without spiffe_id, an SVID the parent refuses as not downstream makes way for the next.
          if (!isSigilError(e, "ERR_PERMISSION_DENIED") || i === candidates.length - 1) {
            if (refusals.length > 0 && e instanceof SigilError) throw new SigilError(e.code, `${e.message} (also refused: ${refusals.join("; ")})`, { cause: e });
            throw e;
          }
          refusals.push(svid.id.toString());
        }
      }
      throw new SigilError("ERR_FAILED_PRECONDITION", `${prefix}: no X509-SVID to present`);
    },
    watchRoots(td: TrustDomain, onRoots: (rootDers: readonly Uint8Array[]) => void): () => void {
      const client = (watchClient = createWorkloadApiClient({ address: socket }));
      let last: string | undefined;
      client.watchX509Bundles(
        (bundles) => {
          const roots = bundles.getX509BundleForTrustDomain(td)?.authorityDers ?? [];
          if (roots.length === 0) return;
          const key = roots.map((d) => Buffer.from(d).toString("base64")).sort().join(",");
          if (key === last) return;
          last = key;
          // The first answer is usually what the last mint saw; passing it on then changes nothing.
          onRoots(roots);
        },
        // Stream failures are retried by the watcher with backoff; the next mint still fetches the bundle itself.
        () => undefined,
      );
      return () => {
        client.close();
        if (watchClient === client) watchClient = undefined;
      };
    },
    close(): void {
      watchClient?.close();
      watchClient = undefined;
    },
  };
}

/**
 * Why the parent's answer cannot be this server's CA, or undefined: `certDer`
 * must be a CA with exactly the URI SAN `spiffe://<td>` for `publicKey`,
 * valid now, chaining through `intermediateDers` to one of `rootDers`.
 */
export function answerProblem(certDer: Uint8Array, intermediateDers: readonly Uint8Array[], rootDers: readonly Uint8Array[], publicKey: KeyObject, td: TrustDomain): string | undefined {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certDer);
  } catch {
    return "a CA certificate that does not parse";
  }
  if (!cert.ca) return "a certificate that is not a CA (CA:false)";
  if (!cert.publicKey.equals(publicKey)) return "a CA certificate for another key than this server's";
  const sans = (cert.subjectAltName ?? "").split(", ").filter((n) => n !== "");
  if (sans.length !== 1 || sans[0] !== `URI:spiffe://${td.name}`) return `a CA certificate whose SAN is not exactly URI:spiffe://${td.name} (got ${sans.join(", ") || "none"})`;
  const now = Date.now();
  let current = cert;
  for (const der of [...intermediateDers]) {
    if (Date.parse(current.validFrom) > now || Date.parse(current.validTo) <= now) return `a certificate outside its validity (${current.subject})`;
    let next: X509Certificate;
    try {
      next = new X509Certificate(der);
    } catch {
      return "an intermediate that does not parse";
    }
    if (!next.ca || !current.checkIssued(next) || !current.verify(next.publicKey)) return `a chain that breaks at ${current.subject}`;
    current = next;
  }
  if (Date.parse(current.validFrom) > now || Date.parse(current.validTo) <= now) return `a certificate outside its validity (${current.subject})`;
  const anchored = rootDers.some((d) => {
    const root = new X509Certificate(d);
    return Buffer.from(d).equals(current.raw) || (current.checkIssued(root) && current.verify(root.publicKey));
  });
  if (!anchored) return "a CA certificate that does not chain to a root of the Workload API bundle";
  return undefined;
}

/** The `sigil` UpstreamAuthority in the plugin catalog. */
export const sigilUpstreamAuthorityPlugin: PluginDescriptor<"UpstreamAuthority", UpstreamAuthorityDeps, UpstreamAuthority> = {
  type: "UpstreamAuthority",
  name: "sigil",
  server: pluginHalf({
    description: "Intermediate CA from a parent Sigil server (nested servers), asked for with this server's downstream X509-SVID from a local agent's Workload API.",
    configSchema: sigilUpstreamAuthorityConfigSchema,
    create: (config, _deps: UpstreamAuthorityDeps) => createSigilUpstreamAuthority(config),
  }),
};
