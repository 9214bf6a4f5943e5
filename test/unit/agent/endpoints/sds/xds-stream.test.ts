/**
 * Version and nonce bookkeeping of one SDS stream (`XdsStreamState`): what a
 * request means (initial, ACK, NACK, stale) and what a response carries.
 */
import { create, fromBinary } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { contentVersion, XdsStreamState } from "../../../../../agent/endpoints/sds/xds-stream.js";
import { encodeMessage } from "../../../../../spiffe/grpc/service.js";
import { BuildVersionSchema } from "../../../../../proto/gen/envoy/config/core/v3/base_pb.js";
import { SecretSchema } from "../../../../../proto/gen/envoy/extensions/transport_sockets/tls/v3/secret_pb.js";
import { DiscoveryRequestSchema, DiscoveryResponseSchema, type DiscoveryResponse } from "../../../../../proto/gen/envoy/service/discovery/v3/discovery_pb.js";

const TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

function content(...names: string[]): DiscoveryResponse {
  return create(DiscoveryResponseSchema, { typeUrl: TYPE, resources: names.map((name) => anyPack(SecretSchema, create(SecretSchema, { name }))) });
}

function request(init: { names?: string[]; version?: string; nonce?: string; nack?: string; nodeId?: string }) {
  return create(DiscoveryRequestSchema, {
    resourceNames: init.names ?? [],
    versionInfo: init.version ?? "",
    responseNonce: init.nonce ?? "",
    typeUrl: TYPE,
    ...(init.nack === undefined ? {} : { errorDetail: { code: 3, message: init.nack } }),
    ...(init.nodeId === undefined ? {} : { node: { id: init.nodeId } }),
  });
}

function stream(): XdsStreamState {
  return new XdsStreamState();
}

describe("SDS stream bookkeeping", () => {
  it("the first request subscribes (names deduplicated) and remembers the node", () => {
    const s = stream();
    expect(s.names).toBeUndefined();
    expect(s.receive(request({ names: ["default", "ROOTCA", "default"], nodeId: "envoy-1" }))).toEqual({ kind: "initial", namesChanged: true });
    expect(s.names).toEqual(["default", "ROOTCA"]);
    expect(s.node?.id).toBe("envoy-1");
  });

  it("a response carries the content's version and a fresh nonce; the same content has the same version on any stream", () => {
    const s = stream();
    s.receive(request({ names: ["default"] }));
    const c = content("default");
    const r1 = s.stamp(c);
    // The same secrets again (a later turn builds a new content object): same version, new nonce.
    const r2 = s.stamp(content("default"));
    expect(r1.versionInfo).toMatch(/^[0-9a-f]{16}$/);
    expect(r2.versionInfo).toBe(r1.versionInfo);
    expect(r1.nonce).toMatch(/^[0-9a-f]+$/);
    expect(r2.nonce).not.toBe(r1.nonce);
    expect(r1.resources).toEqual(c.resources);
    expect(r1.typeUrl).toBe(TYPE);
    expect(contentVersion(content("ROOTCA"))).not.toBe(r1.versionInfo);
    // Streams sending one content object share one response (and its encoding).
    expect(stream().stamp(c)).toBe(r1);
    // On the wire: the shared content's bytes plus the version and nonce, decoding to the stamped response.
    const wire = fromBinary(DiscoveryResponseSchema, new Uint8Array(encodeMessage(DiscoveryResponseSchema, r2)));
    expect(wire).toEqual(r2);
    // Stamping never changes the shared content.
    expect(c.versionInfo).toBe("");
    expect(c.nonce).toBe("");
  });

  it("a stream never sends a nonce twice, even when it sends a shared content object again (A, B, A in one turn); nonces say nothing of other streams' responses", () => {
    const s = stream();
    s.receive(request({ names: ["a"] }));
    const a = content("a");
    const r1 = s.stamp(a);
    const r2 = s.stamp(content("b"));
    const r3 = s.stamp(a);
    expect(new Set([r1.nonce, r2.nonce, r3.nonce]).size).toBe(3);
    expect(r3.versionInfo).toBe(r1.versionInfo);
    expect(fromBinary(DiscoveryResponseSchema, new Uint8Array(encodeMessage(DiscoveryResponseSchema, r3)))).toEqual(r3);
    // Another stream sending `a` for the first time shares the first response.
    expect(stream().stamp(a)).toBe(r1);
    // Not an agent-wide counter: responses sent on other streams between two of this stream's do not show.
    const n1 = s.stamp(content("c")).nonce;
    for (let i = 0; i < 5; i++) stream().stamp(content(`other-${i}`));
    const n2 = s.stamp(content("d")).nonce;
    expect(n1).toMatch(/^[0-9a-f]{16}$/);
    expect(parseInt(n2, 16) - parseInt(n1, 16)).not.toBe(6);
  });

  it("an ACK with the last nonce advances the applied version; a changed name set is reported, a reordered one is not", () => {
    const s = stream();
    s.receive(request({ names: ["a", "b"] }));
    const r = s.stamp(content("a", "b"));
    expect(s.receive(request({ names: ["b", "a"], version: r.versionInfo, nonce: r.nonce }))).toEqual({ kind: "ack", version: r.versionInfo, namesChanged: false });
    expect(s.appliedVersion).toBe(r.versionInfo);
    expect(s.receive(request({ names: ["a"], version: r.versionInfo, nonce: r.nonce }))).toEqual({ kind: "ack", version: r.versionInfo, namesChanged: true });
    expect(s.names).toEqual(["a"]);
  });

  it("a NACK keeps the applied version and reports the rejected one with the reason", () => {
    const s = stream();
    s.receive(request({ names: ["default"] }));
    const good = s.stamp(content("default"));
    s.receive(request({ names: ["default"], version: good.versionInfo, nonce: good.nonce }));
    const bad = s.stamp(content("default", "x"));
    const v = s.receive(request({ names: ["default"], version: good.versionInfo, nonce: bad.nonce, nack: "bad key" }));
    expect(v).toEqual({ kind: "nack", rejectedVersion: bad.versionInfo, appliedVersion: good.versionInfo, reason: "bad key", code: 3, namesChanged: false });
    expect(s.appliedVersion).toBe(good.versionInfo);
    expect(s.sentVersion).toBe(bad.versionInfo);
  });

  it("a request with an older nonce is stale: ignored, names and all", () => {
    const s = stream();
    s.receive(request({ names: ["a"] }));
    const r1 = s.stamp(content("a"));
    s.stamp(content("a", "b"));
    expect(s.receive(request({ names: ["c"], version: r1.versionInfo, nonce: r1.nonce }))).toEqual({ kind: "stale", nonce: r1.nonce, namesChanged: false });
    expect(s.receive(request({ names: ["c"] }))).toMatchObject({ kind: "stale", nonce: "" });
    expect(s.names).toEqual(["a"]);
    expect(s.appliedVersion).toBe("");
  });

  it("before any response, a second request only changes the subscription", () => {
    const s = stream();
    s.receive(request({ names: ["unknown"] }));
    expect(s.receive(request({ names: ["unknown", "default"] }))).toEqual({ kind: "ack", version: "", namesChanged: true });
    expect(s.names).toEqual(["unknown", "default"]);
  });

  it("keeps of the node only what the secrets depend on (its validator override and build version), not its other metadata, features or unknown fields", () => {
    const s = stream();
    const req = request({ names: ["a"], nodeId: "envoy-1" });
    const node = req.node!;
    node.metadata = { disable_spiffe_cert_validation: "true", ISTIO_META: { big: "x".repeat(50_000) } };
    node.clientFeatures = Array.from({ length: 500 }, (_, i) => `envoy.feature.${i}`);
    node.cluster = "c".repeat(50_000);
    // Envoy's `extensions` and `locality`, which Sigil's trimmed proto does not know, arrive as unknown fields.
    node.$unknown = [{ no: 9, wireType: 2, data: new Uint8Array(50_000) }];
    node.userAgentVersionType = { case: "userAgentBuildVersion", value: create(BuildVersionSchema, { version: { majorNumber: 1, minorNumber: 17 }, metadata: { junk: "y".repeat(10_000) } }) };
    s.receive(req);
    expect(s.node?.id).toBe("envoy-1");
    expect(s.node?.metadata).toEqual({ disable_spiffe_cert_validation: "true" });
    expect(s.node?.clientFeatures).toEqual([]);
    expect(s.node?.$unknown ?? []).toEqual([]);
    const uv = s.node?.userAgentVersionType;
    expect(uv?.case === "userAgentBuildVersion" && uv.value.version).toMatchObject({ majorNumber: 1, minorNumber: 17 });
    expect(uv?.case === "userAgentBuildVersion" && uv.value.metadata).toBeUndefined();
    expect(JSON.stringify(s.node).length).toBeLessThan(1024);
  });

  it("a request without node keeps the node seen before", () => {
    const s = stream();
    s.receive(request({ names: ["a"], nodeId: "envoy-1" }));
    const r = s.stamp(content("a"));
    s.receive(request({ names: ["a"], version: r.versionInfo, nonce: r.nonce }));
    expect(s.node?.id).toBe("envoy-1");
  });
});
