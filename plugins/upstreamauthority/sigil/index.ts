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
 * Renewal is the CA manager's: it prepares the next authority (and so calls
 * this plugin again) at half the current one's life, which ends at the
 * intermediate's notAfter (the parent caps it at `server.downstream_ca_ttl`).
 */
import { X509Certificate } from "node:crypto";
import { credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { z } from "zod";
import { serverSpiffeId } from "../../../common/reserved-ids.js";
import { grpcStatusForCode } from "../../../common/rpc/status.js";
import { createUnaryClient } from "../../../common/rpc/unary-client.js";
import { DownstreamAPI } from "../../../proto/gen/sigil/agent/v1/downstream_pb.js";
import { CALLER_CHAIN_METADATA_KEY } from "../../../server/api/presented-chain.js";
import { SigilError, type ErrorCode } from "../../../spiffe/errors.js";
import { encodePemCertificates, encodePemPrivateKey } from "../../../spiffe/pem.js";
import { authorizeId } from "../../../spiffe/tls/authorizer.js";
import { chainFromPeerCertificate, verifyPeerSvid } from "../../../spiffe/tls/verify-peer.js";
import { createWorkloadApiClient } from "../../../spiffe/workloadapi/client.js";
import type { X509Context } from "../../../spiffe/workloadapi/x509-context.js";
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

  return {
    name: "sigil",
    async mintX509Ca(req: MintX509CaRequest): Promise<MintedX509Ca> {
      const ctx = await fetchContext();
      const td = req.trustDomain;
      const svid = ctx.svids.find((s) => s.id.trustDomain.equals(td));
      if (!svid) {
        throw new SigilError("ERR_FAILED_PRECONDITION", `${prefix}: the Workload API at ${config.workload_api_socket} gave no X509-SVID of ${td.name} (got ${ctx.svids.map((s) => s.id.toString()).join(", ")})`);
      }
      const bundle = ctx.bundles.get(td.name);
      if (!bundle || bundle.authorityDers.length === 0) throw new SigilError("ERR_FAILED_PRECONDITION", `${prefix}: the Workload API gave no X.509 bundle of ${td.name}`);
      const parentId = serverSpiffeId(td);
      const creds = credentials.createSsl(
        Buffer.from(encodePemCertificates(bundle.authorityDers)),
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
      if (!certDer || res.x509Authorities.length === 0) throw new SigilError("ERR_UNAVAILABLE", `${prefix}: the parent at ${config.server_address} answered without a CA certificate or roots`);
      const cert = new X509Certificate(certDer);
      if (!cert.ca || !cert.publicKey.equals(req.publicKey)) {
        throw new SigilError("ERR_UNAVAILABLE", `${prefix}: the parent at ${config.server_address} answered with a certificate that is not a CA for this server's key`);
      }
      return { certDer, intermediateDers, rootDers: res.x509Authorities, notAfter: new Date(cert.validTo) };
    },
  };
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
