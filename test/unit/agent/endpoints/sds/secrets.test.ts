/**
 * SDS secrets (`agent/endpoints/sds/secrets.ts`): which secret answers which
 * name, the SPIFFE validator rule, and Envoy's JSON rendering of a `Secret`
 * (the field names Envoy prints) round-tripping through the generated types.
 */
import { create, createRegistry, fromBinary, fromJson, toBinary, toJson, type JsonValue } from "@bufbuild/protobuf";
import { anyUnpack, AnySchema } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { DEFAULT_SDS_NAMES, resolveSecrets, secretsAnswerFor, spiffeValidationFor, type CallerView } from "../../../../../agent/endpoints/sds/secrets.js";
import type { CachedIdentity } from "../../../../../agent/cache/types.js";
import { parseSelector } from "../../../../../common/selector.js";
import { NodeSchema } from "../../../../../proto/gen/envoy/config/core/v3/base_pb.js";
import { SecretSchema, type Secret } from "../../../../../proto/gen/envoy/extensions/transport_sockets/tls/v3/secret_pb.js";
import { SPIFFECertValidatorConfigSchema } from "../../../../../proto/gen/envoy/extensions/transport_sockets/tls/v3/tls_spiffe_validator_config_pb.js";
import { encodePemCertificates, encodePemPrivateKey } from "../../../../../spiffe/pem.js";
import { FakeTrustDomain } from "../../../../fakes/fake-workload-cache.js";

const own = FakeTrustDomain.create("example.org");
const partner = FakeTrustDomain.create("partner.org");
const unrelated = FakeTrustDomain.create("unrelated.org");

let n = 0;
function identity(spiffeId: string, federatesWith: string[] = [], svidFor = spiffeId): CachedIdentity {
  n += 1;
  return {
    entry: { id: `e${n}`, spiffeId, selectors: [parseSelector("unix:uid:1")], federatesWith, hint: "", createdAt: new Date(n * 1000), revision: 1, jwtSvidTtlSeconds: 300 },
    svid: own.issueX509Svid(svidFor),
  };
}

const web = identity("spiffe://example.org/web");
const db = identity("spiffe://example.org/db", ["partner.org"]);
const bundles = { own: own.bundle(), federated: new Map([["partner.org", partner.bundle()], ["unrelated.org", unrelated.bundle()]]) };
const view: CallerView = { identities: [web, db], bundles, trustDomain: own.trustDomain };
const options = { ...DEFAULT_SDS_NAMES, spiffeCertValidation: true };
const pem = (ders: readonly Uint8Array[]) => new TextEncoder().encode(encodePemCertificates(ders));

function kind(s: Secret): [string, string | undefined] {
  return [s.name, s.type.case];
}

describe("SDS secrets", () => {
  it("default is the first identity's TLS certificate: PEM chain and PEM PKCS#8 key, inline", () => {
    const { secrets, leftOut } = resolveSecrets(["default"], view, options);
    expect(leftOut).toEqual([]);
    const s = secrets[0]!;
    expect(s.type.case).toBe("tlsCertificate");
    if (s.type.case !== "tlsCertificate") return;
    expect(s.type.value.certificateChain?.specifier).toEqual({ case: "inlineBytes", value: pem(web.svid.chain) });
    expect(s.type.value.privateKey?.specifier).toEqual({ case: "inlineBytes", value: new TextEncoder().encode(encodePemPrivateKey(web.svid.privateKeyPkcs8)) });
  });

  it("names in the order asked, each once: an SVID by SPIFFE ID, ROOTCA, a trust domain the caller federates with", () => {
    const { secrets } = resolveSecrets(["spiffe://example.org/db", "ROOTCA", "spiffe://partner.org", "spiffe://example.org", "ROOTCA"], view, options);
    expect(secrets.map(kind)).toEqual([
      ["spiffe://example.org/db", "tlsCertificate"],
      ["ROOTCA", "validationContext"],
      ["spiffe://partner.org", "validationContext"],
      ["spiffe://example.org", "validationContext"],
    ]);
    const partnerCa = secrets[2]!.type.case === "validationContext" ? secrets[2]!.type.value.trustedCa?.specifier : undefined;
    expect(partnerCa).toEqual({ case: "inlineBytes", value: pem([partner.caDer]) });
  });

  it("leaves out unknown names, other identities, trust domains the caller does not federate with, and an SVID whose certificate names another ID", () => {
    const liar = identity("spiffe://example.org/liar", [], "spiffe://example.org/someone-else");
    const { secrets, leftOut } = resolveSecrets(
      ["nope", "spiffe://example.org/other", "spiffe://unrelated.org", "spiffe://example.org/liar", "spiffe://example.org/someone-else", "default"],
      { ...view, identities: [liar, web] },
      options,
    );
    expect(secrets.map(kind)).toEqual([["default", "tlsCertificate"]]);
    // default skips the identity that cannot be sent.
    expect(secrets[0]!.type.case === "tlsCertificate" && secrets[0]!.type.value.certificateChain?.specifier.value).toEqual(pem(web.svid.chain));
    expect(leftOut).toEqual(["nope", "spiffe://example.org/other", "spiffe://unrelated.org", "spiffe://example.org/liar", "spiffe://example.org/someone-else"]);
  });

  it("no names: every validation context by trust domain, then every TLS certificate by SPIFFE ID", () => {
    expect(resolveSecrets([], view, options).secrets.map(kind)).toEqual([
      ["spiffe://example.org", "validationContext"],
      ["spiffe://partner.org", "validationContext"],
      ["spiffe://example.org/web", "tlsCertificate"],
      ["spiffe://example.org/db", "tlsCertificate"],
    ]);
  });

  it("ALL: trusted_ca without federated bundles; the SPIFFE validator, sorted by trust domain, with them; left out when the validator is off", () => {
    const plain = resolveSecrets(["ALL"], { ...view, identities: [web] }, options).secrets[0]!;
    expect(plain.type.case === "validationContext" && plain.type.value.trustedCa?.specifier.value).toEqual(pem([own.caDer]));
    const all = resolveSecrets(["ALL"], view, options).secrets[0]!;
    if (all.type.case !== "validationContext") throw new Error("expected a validation context");
    expect(all.type.value.trustedCa).toBeUndefined();
    expect(all.type.value.customValidatorConfig?.name).toBe("envoy.tls.cert_validator.spiffe");
    const config = anyUnpack(all.type.value.customValidatorConfig!.typedConfig!, SPIFFECertValidatorConfigSchema);
    expect(config?.trustDomains.map((t) => [t.name, t.trustBundle?.specifier.value])).toEqual([
      ["example.org", pem([own.caDer])],
      ["partner.org", pem([partner.caDer])],
    ]);
    expect(resolveSecrets(["ALL", "ROOTCA"], view, { ...options, spiffeCertValidation: false })).toMatchObject({ leftOut: ["ALL"] });
  });

  it("the validator rule: config, node metadata (bool or a ParseBool string) and Envoy's build version", () => {
    const node = (init: Parameters<typeof create<typeof NodeSchema>>[1]) => create(NodeSchema, init);
    expect(spiffeValidationFor(undefined, false)).toBe(true);
    expect(spiffeValidationFor(undefined, true)).toBe(false);
    expect(spiffeValidationFor(node({ metadata: { disable_spiffe_cert_validation: true } }), false)).toBe(false);
    expect(spiffeValidationFor(node({ metadata: { disable_spiffe_cert_validation: "F" } }), true)).toBe(true);
    expect(spiffeValidationFor(node({ metadata: { disable_spiffe_cert_validation: "maybe" } }), true)).toBe(false);
    expect(spiffeValidationFor(node({ metadata: { disable_spiffe_cert_validation: "constructor" } }), false)).toBe(true);
    const build = (major: number, minor: number) => node({ userAgentVersionType: { case: "userAgentBuildVersion", value: { version: { majorNumber: major, minorNumber: minor } } } });
    expect(spiffeValidationFor(build(1, 17), false)).toBe(false);
    expect(spiffeValidationFor(build(1, 18), false)).toBe(true);
  });

  it("callers with the same view and request share one answer in a turn of the event loop", () => {
    const a = secretsAnswerFor(["default"], view, options);
    expect(secretsAnswerFor(["default"], { ...view }, options)).toBe(a);
    expect(secretsAnswerFor(["ROOTCA"], view, options)).not.toBe(a);
    expect(a.content.resources[0]?.typeUrl).toBe("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret");
  });
});

describe("Envoy's JSON rendering of a Secret", () => {
  const registry = createRegistry(SecretSchema, SPIFFECertValidatorConfigSchema);
  const b64 = (s: string) => Buffer.from(s).toString("base64");
  const chainPem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  const keyPem = "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n";

  /** JSON → generated types → wire bytes → generated types → JSON. */
  function roundTrip(json: JsonValue, useProtoFieldName: boolean): JsonValue {
    const any = fromJson(AnySchema, json, { registry });
    const back = fromBinary(AnySchema, toBinary(AnySchema, any));
    return toJson(AnySchema, back, { registry, useProtoFieldName });
  }

  it("a TLS certificate as protojson prints it (lowerCamelCase: tlsCertificate.certificateChain.inlineBytes, base64)", () => {
    const json = {
      "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
      name: "default",
      tlsCertificate: { certificateChain: { inlineBytes: b64(chainPem) }, privateKey: { inlineBytes: b64(keyPem) } },
    };
    expect(roundTrip(json, false)).toEqual(json);
    const secret = anyUnpack(fromJson(AnySchema, json, { registry }), SecretSchema);
    expect(secret?.type.case === "tlsCertificate" && Buffer.from(secret.type.value.certificateChain?.specifier.value as Uint8Array).toString()).toBe(chainPem);
  });

  it("a SPIFFE validation context as Envoy's admin config_dump prints it (proto field names, nested @type)", () => {
    const json = {
      "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
      name: "ALL",
      validation_context: {
        custom_validator_config: {
          name: "envoy.tls.cert_validator.spiffe",
          typed_config: {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig",
            trust_domains: [
              { name: "example.org", trust_bundle: { inline_bytes: b64(chainPem) } },
              { name: "partner.org", trust_bundle: { inline_bytes: b64(chainPem) } },
            ],
          },
        },
      },
    };
    expect(roundTrip(json, true)).toEqual(json);
  });

  it("what the agent sends renders as Envoy prints it", () => {
    const { content } = secretsAnswerFor(["ROOTCA"], view, options);
    expect(toJson(AnySchema, content.resources[0]!, { registry, useProtoFieldName: true })).toEqual({
      "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
      name: "ROOTCA",
      validation_context: { trusted_ca: { inline_bytes: Buffer.from(pem([own.caDer])).toString("base64") } },
    });
  });
});
