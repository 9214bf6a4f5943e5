/**
 * Pure builders of Envoy SDS secrets from what the cache holds for one
 * caller: which `Secret` answers which requested name, in Envoy's wire form
 * (`envoy.extensions.transport_sockets.tls.v3.Secret`, packed in `Any`).
 *
 * Names (SPIRE's defaults, configurable under `agent.sds`):
 * - `default` ({@link SdsNames.defaultSvidName}): the TLS certificate of the
 *   caller's default identity (the first, as the Workload API orders them);
 * - a SPIFFE ID the caller holds: that identity's TLS certificate;
 * - `ROOTCA` ({@link SdsNames.defaultBundleName}) or `spiffe://<own td>`: the
 *   own trust domain's roots as `trusted_ca`;
 * - `spiffe://<federated td>` the caller federates with: that domain's roots;
 * - `ALL` ({@link SdsNames.defaultAllBundlesName}): the own roots, or, when the
 *   caller has federated bundles, the `envoy.tls.cert_validator.spiffe`
 *   validator with one bundle per trust domain, so no domain can vouch for
 *   another's IDs;
 * - no name at all: every validation context by `spiffe://<td>` and every
 *   TLS certificate by SPIFFE ID.
 * Any other name (unknown, or a secret the caller is not entitled to) is left
 * out of the answer, as xDS expects for a resource that does not exist: the
 * caller never receives another identity's secret, and learns nothing about it.
 *
 * Certificates are PEM (leaf first), keys PEM PKCS#8, all `inline_bytes`.
 * A TLS certificate is sent only if its leaf's URI SAN is the entry's SPIFFE
 * ID, as for the Workload API.
 */
import { create, type MessageShape } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import type { SpiffeBundle } from "../../../spiffe/bundle/spiffe-bundle.js";
import type { TrustDomain } from "../../../spiffe/id.js";
import { encodePemCertificates, encodePemPrivateKey } from "../../../spiffe/pem.js";
import { DataSourceSchema, type DataSource, type Node } from "../../../proto/gen/envoy/config/core/v3/base_pb.js";
import {
  CertificateValidationContextSchema,
  TlsCertificateSchema,
  type CertificateValidationContext,
  type TlsCertificate,
} from "../../../proto/gen/envoy/extensions/transport_sockets/tls/v3/common_pb.js";
import { SecretSchema, type Secret } from "../../../proto/gen/envoy/extensions/transport_sockets/tls/v3/secret_pb.js";
import { SPIFFECertValidatorConfigSchema } from "../../../proto/gen/envoy/extensions/transport_sockets/tls/v3/tls_spiffe_validator_config_pb.js";
import { DiscoveryResponseSchema, type DiscoveryResponse } from "../../../proto/gen/envoy/service/discovery/v3/discovery_pb.js";
import type { BundleSnapshot, CachedIdentity, CachedX509Svid } from "../../cache/types.js";
import { objectKey, memoThisTurn } from "../turn-memo.js";
import { federatedBundlesFor, svidSpiffeId } from "../workload-api/responses.js";

/** The type URL of every SDS resource and response. */
export const SECRET_TYPE_URL = `type.googleapis.com/${SecretSchema.typeName}`;

/** Envoy's name of the SPIFFE certificate validator extension. */
export const SPIFFE_CERT_VALIDATOR_NAME = "envoy.tls.cert_validator.spiffe";

/** The configurable resource names (`agent.sds`, SPIRE's option names and defaults). */
export interface SdsNames {
  /** `default_svid_name`: the caller's default TLS certificate. Default `default`. */
  readonly defaultSvidName: string;
  /** `default_bundle_name`: the own trust domain's roots. Default `ROOTCA`. */
  readonly defaultBundleName: string;
  /** `default_all_bundles_name`: every trust domain the caller trusts. Default `ALL`. */
  readonly defaultAllBundlesName: string;
}

/** SPIRE's defaults. */
export const DEFAULT_SDS_NAMES: SdsNames = { defaultSvidName: "default", defaultBundleName: "ROOTCA", defaultAllBundlesName: "ALL" };

/** How one stream's secrets are built. */
export interface SecretOptions extends SdsNames {
  /** Whether `ALL` may use the SPIFFE validator (see {@link spiffeValidationFor}). */
  readonly spiffeCertValidation: boolean;
}

/** What one caller may receive. */
export interface CallerView {
  /** Its identities, already selected (`selectIdentities`), default first. */
  readonly identities: readonly CachedIdentity[];
  readonly bundles: BundleSnapshot;
  readonly trustDomain: TrustDomain;
}

/** The secrets answering a request, and the requested names left out. */
export interface ResolvedSecrets {
  readonly secrets: readonly Secret[];
  /** Requested names nothing answers: unknown, not the caller's, or `ALL` without the SPIFFE validator while federated bundles exist. */
  readonly leftOut: readonly string[];
  /** The X509-SVIDs whose certificate secrets are among `secrets` (pick-up reporting). */
  readonly svids: readonly CachedX509Svid[];
}

/** Go's `strconv.ParseBool` spellings, as SPIRE reads the node metadata. */
const BOOL_STRINGS: ReadonlyMap<string, boolean> = new Map([
  ...["1", "t", "T", "TRUE", "true", "True"].map((s) => [s, true] as const),
  ...["0", "f", "F", "FALSE", "false", "False"].map((s) => [s, false] as const),
]);

/**
 * Whether the SPIFFE validator may be used for a node: the agent's setting
 * (`!disable_spiffe_cert_validation`), overridden by the node's metadata key
 * `disable_spiffe_cert_validation` (a bool, or a string that parses as one;
 * other values are ignored), and never for an Envoy older than 1.18, which
 * lacks the validator (told by `user_agent_build_version`; absent, the Envoy
 * is assumed recent).
 */
export function spiffeValidationFor(node: Node | undefined, disabledByConfig: boolean): boolean {
  let disabled = disabledByConfig;
  const v = node?.metadata?.["disable_spiffe_cert_validation"];
  if (typeof v === "boolean") disabled = v;
  else if (typeof v === "string") disabled = BOOL_STRINGS.get(v) ?? disabled;
  const build = node?.userAgentVersionType.case === "userAgentBuildVersion" ? node.userAgentVersionType.value.version : undefined;
  if (build !== undefined && (build.majorNumber < 1 || (build.majorNumber === 1 && build.minorNumber < 18))) return false;
  return !disabled;
}

function inline(bytes: Uint8Array): DataSource {
  return create(DataSourceSchema, { specifier: { case: "inlineBytes", value: bytes } });
}

const encoder = new TextEncoder();

/** TLS certificates by SVID: PEM-encoded once per rotation, not once per stream. */
const tlsCertificates = new WeakMap<CachedX509Svid, TlsCertificate>();

function tlsCertificate(svid: CachedX509Svid): TlsCertificate {
  let tls = tlsCertificates.get(svid);
  if (tls === undefined) {
    tls = create(TlsCertificateSchema, {
      certificateChain: inline(encoder.encode(encodePemCertificates(svid.chain))),
      privateKey: inline(encoder.encode(encodePemPrivateKey(svid.privateKeyPkcs8))),
    });
    tlsCertificates.set(svid, tls);
  }
  return tls;
}

/** PEM roots by bundle. */
const rootsPem = new WeakMap<SpiffeBundle, DataSource>();

function roots(bundle: SpiffeBundle): DataSource {
  let pem = rootsPem.get(bundle);
  if (pem === undefined) rootsPem.set(bundle, (pem = inline(encoder.encode(encodePemCertificates(bundle.x509Authorities)))));
  return pem;
}

function trustedCa(bundle: SpiffeBundle): CertificateValidationContext {
  return create(CertificateValidationContextSchema, { trustedCa: roots(bundle) });
}

/** The SPIFFE validator over `bundles` (sorted by trust-domain name, as Envoy lists them). */
function spiffeValidator(bundles: readonly SpiffeBundle[]): CertificateValidationContext {
  const sorted = [...bundles].sort((a, b) => (a.trustDomain.name < b.trustDomain.name ? -1 : a.trustDomain.name > b.trustDomain.name ? 1 : 0));
  const config = create(SPIFFECertValidatorConfigSchema, {
    trustDomains: sorted.map((b) => ({ name: b.trustDomain.name, trustBundle: roots(b) })),
  });
  return create(CertificateValidationContextSchema, {
    customValidatorConfig: { name: SPIFFE_CERT_VALIDATOR_NAME, typedConfig: anyPack(SPIFFECertValidatorConfigSchema, config) },
  });
}

function certificateSecret(name: string, svid: CachedX509Svid): Secret {
  return create(SecretSchema, { name, type: { case: "tlsCertificate", value: tlsCertificate(svid) } });
}

function validationSecret(name: string, context: CertificateValidationContext): Secret {
  return create(SecretSchema, { name, type: { case: "validationContext", value: context } });
}

/**
 * The secrets answering `names` for one caller (see the module comment), in
 * the order requested, each name once; `[]` asks for everything.
 */
export function resolveSecrets(names: readonly string[], view: CallerView, options: SecretOptions): ResolvedSecrets {
  const { bundles, trustDomain } = view;
  // Only identities whose certificate names their entry's ID; the first of several with one ID.
  const byId = new Map<string, CachedX509Svid>();
  for (const { entry, svid } of view.identities) {
    if (svidSpiffeId(svid) === entry.spiffeId && !byId.has(entry.spiffeId)) byId.set(entry.spiffeId, svid);
  }
  const federated = federatedBundlesFor(view.identities, bundles, trustDomain).filter((b) => b.x509Authorities.length > 0);
  const trusted = new Map<string, SpiffeBundle>([[trustDomain.idString(), bundles.own], ...federated.map((b) => [b.trustDomain.idString(), b] as const)]);

  if (names.length === 0) {
    const secrets: Secret[] = [];
    for (const [id, b] of trusted) secrets.push(validationSecret(id, trustedCa(b)));
    for (const [id, svid] of byId) secrets.push(certificateSecret(id, svid));
    return { secrets, leftOut: [], svids: [...byId.values()] };
  }

  const secrets: Secret[] = [];
  const leftOut: string[] = [];
  const svids: CachedX509Svid[] = [];
  for (const name of new Set(names)) {
    let secret: Secret | undefined;
    if (name === options.defaultSvidName) {
      const first = byId.entries().next();
      if (first.done !== true) {
        secret = certificateSecret(name, first.value[1]);
        svids.push(first.value[1]);
      }
    } else if (name === options.defaultBundleName) {
      secret = validationSecret(name, trustedCa(bundles.own));
    } else if (name === options.defaultAllBundlesName) {
      if (federated.length === 0) secret = validationSecret(name, trustedCa(bundles.own));
      else if (options.spiffeCertValidation) secret = validationSecret(name, spiffeValidator([...trusted.values()]));
    } else {
      const svid = byId.get(name);
      const bundle = trusted.get(name);
      if (svid !== undefined) {
        secret = certificateSecret(name, svid);
        svids.push(svid);
      } else if (bundle !== undefined) secret = validationSecret(name, trustedCa(bundle));
    }
    if (secret === undefined) leftOut.push(name);
    else secrets.push(secret);
  }
  return { secrets, leftOut, svids };
}

/** The answer to a request, before a stream stamps it with its version and nonce. */
export interface SecretsAnswer {
  /** `resources` and `type_url` of the DiscoveryResponse; shared by every caller with the same view and request. */
  readonly content: DiscoveryResponse;
  readonly leftOut: readonly string[];
  /** The X509-SVIDs it carries (pick-up reporting). */
  readonly svids: readonly CachedX509Svid[];
}

/**
 * Names what a caller's secrets are made of: the cache objects of its view
 * (replaced on change, never modified) and the validator choice. Equal keys,
 * equal secrets for the same names; see `../turn-memo.ts`.
 */
export function callerViewKey(view: CallerView, spiffeCertValidation: boolean): string {
  return `${objectKey(view.bundles)};${spiffeCertValidation ? "v" : "-"};${view.identities.map((i) => `${objectKey(i.entry)}:${objectKey(i.svid)}`).join(",")}`;
}

// Memo key parts of option objects and name lists: a stream passes the same objects on every
// recomputation, so after a rotation each of its 1,000 streams builds only the short per-view part.
// Both rely on the objects never changing after their first use (a stream's name list is replaced
// on a new subscription, never edited), and the validator choice is part of `viewKey`, not of the
// options key: a caller passes the viewKey of the options it passes.
const optionsKeys = new WeakMap<SecretOptions, string>();
const namesKeys = new WeakMap<readonly string[], string>();

function optionsKey(options: SecretOptions): string {
  let k = optionsKeys.get(options);
  if (k === undefined) optionsKeys.set(options, (k = JSON.stringify([options.defaultSvidName, options.defaultBundleName, options.defaultAllBundlesName])));
  return k;
}

function namesKey(names: readonly string[]): string {
  let k = namesKeys.get(names);
  if (k === undefined) namesKeys.set(names, (k = JSON.stringify(names)));
  return k;
}

/**
 * {@link resolveSecrets} as a DiscoveryResponse's content, built once per
 * turn of the event loop for the same request and the same cache objects:
 * after a rotation every SDS stream recomputes, and callers with the same
 * identities asking for the same names (the replicas of one service) share
 * one answer, packed and encoded once.
 */
export function secretsAnswerFor(names: readonly string[], view: CallerView, options: SecretOptions, viewKey: string = callerViewKey(view, options.spiffeCertValidation)): SecretsAnswer {
  const key = `${view.trustDomain.name}\n${viewKey}\n${optionsKey(options)}\n${namesKey(names)}`;
  return memoThisTurn("sds", key, () => {
    const { secrets, leftOut, svids } = resolveSecrets(names, view, options);
    const content: MessageShape<typeof DiscoveryResponseSchema> = create(DiscoveryResponseSchema, {
      typeUrl: SECRET_TYPE_URL,
      resources: secrets.map((s) => anyPack(SecretSchema, s)),
    });
    return { content, leftOut, svids };
  });
}
