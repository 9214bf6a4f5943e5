import { describe, expect, it } from "vitest";
import { isSigilError } from "../../../../spiffe/errors.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { authorizeAny, authorizeId, authorizeMemberOf, authorizeOneOf, type Authorizer } from "../../../../spiffe/tls/authorizer.js";
import { verifyPeerSvid } from "../../../../spiffe/tls/verify-peer.js";
import { craftCertificate, makeIntermediate, makeLeaf, makeRoot, NOW, trusting } from "../../../fixtures/x509/pki.js";

const id = (s: string) => parseSpiffeId(s);
const refusal = (a: Authorizer, peer: string): unknown => {
  try {
    a(id(peer), []);
  } catch (e) {
    return e;
  }
  return undefined;
};

describe("authorizers", () => {
  it("authorizeId accepts exactly one ID, path case included", () => {
    const a = authorizeId("spiffe://a.test/api");
    expect(refusal(a, "spiffe://a.test/api")).toBeUndefined();
    const e = refusal(a, "spiffe://a.test/API");
    expect(isSigilError(e, "ERR_PERMISSION_DENIED")).toBe(true);
    expect((e as Error).message).toBe("tls: peer spiffe://a.test/API is not authorized: want spiffe://a.test/api");
    expect(refusal(authorizeId(id("spiffe://a.test/api")), "spiffe://b.test/api")).toBeDefined();
  });

  it("authorizeOneOf, authorizeMemberOf, authorizeAny", () => {
    const one = authorizeOneOf("spiffe://a.test/x", id("spiffe://b.test/y"));
    expect(refusal(one, "spiffe://b.test/y")).toBeUndefined();
    expect((refusal(one, "spiffe://b.test/x") as Error).message).toMatch(/want one of spiffe:\/\/a.test\/x, spiffe:\/\/b.test\/y/);
    const member = authorizeMemberOf("b.test");
    expect(refusal(member, "spiffe://b.test/anything")).toBeUndefined();
    expect((refusal(member, "spiffe://a.test/x") as Error).message).toMatch(/want a member of b.test/);
    expect(refusal(authorizeMemberOf(parseTrustDomain("a.test")), "spiffe://a.test/x")).toBeUndefined();
    expect(refusal(authorizeAny(), "spiffe://z.test/x")).toBeUndefined();
  });

  it("bad arguments are ERR_INVALID_ARGUMENT naming the builder", () => {
    expect(() => authorizeId("http://a.test/x")).toThrow(/tls: authorizeId: spiffe id/);
    expect(() => authorizeOneOf()).toThrow(/at least one SPIFFE ID/);
    expect(() => authorizeOneOf("spiffe://a.test/x", "nope")).toThrow(/authorizeOneOf argument 1/);
    expect(() => authorizeMemberOf("spiffe://a.test")).toThrow(/tls: authorizeMemberOf: trust domain/);
  });
});

describe("verifyPeerSvid", () => {
  const a = makeRoot("a.test");
  const b = makeRoot("b.test");
  const bundles = trusting(a, b);

  it("verifies against the peer's own trust domain and hands the authorizer the verified path", () => {
    const inter = makeIntermediate(a);
    const leaf = makeLeaf(inter, "spiffe://a.test/web");
    let seen: readonly Uint8Array[] = [];
    const peer = verifyPeerSvid(leaf.chain, bundles, (_id, chain) => (seen = chain), { now: NOW });
    expect(peer.id.toString()).toBe("spiffe://a.test/web");
    expect(seen.map((d) => Buffer.from(d).toString("hex"))).toEqual([leaf.der, inter.der, a.rootDer].map((d) => Buffer.from(d).toString("hex")));
  });

  it("FED-6: a leaf naming a.test signed by b.test's root does not verify, whatever the authorizer", () => {
    const forged = craftCertificate(b, { uris: ["spiffe://a.test/web"] });
    expect(() => verifyPeerSvid([forged.der], bundles, authorizeAny(), { now: NOW })).toThrow(/ERR_X509_CHAIN_INVALID|not issued by an authority of trust domain a.test|does not verify/);
  });

  it("a plain Error from an authorizer becomes ERR_PERMISSION_DENIED", () => {
    const leaf = makeLeaf(a, "spiffe://a.test/web");
    let err: unknown;
    try {
      verifyPeerSvid(leaf.chain, bundles, () => {
        throw new Error("not on the list");
      }, { now: NOW });
    } catch (e) {
      err = e;
    }
    expect(isSigilError(err, "ERR_PERMISSION_DENIED")).toBe(true);
    expect((err as Error).message).toBe("tls: peer spiffe://a.test/web refused by the authorizer: not on the list");
  });
});
