/**
 * BundleSet: an immutable per-trust-domain set that serves as both bundle sources.
 */
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { BundleSet } from "../../../../spiffe/bundle/bundle-set.js";
import { parseSpiffeBundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";

const TD = parseTrustDomain("example.org");
const OTHER = parseTrustDomain("other.example");
const valid = parseSpiffeBundle(readFileSync(new URL("../../../fixtures/bundle-valid.json", import.meta.url), "utf8"), TD).bundle;

describe("BundleSet", () => {
  it("answers both source interfaces from the same bundle, converting once", () => {
    const set = new BundleSet([valid]);
    const x = set.getX509BundleForTrustDomain(TD);
    expect(x?.authorityDers).toHaveLength(2);
    expect(set.getX509BundleForTrustDomain(TD)).toBe(x);
    const j = set.getJwtBundleForTrustDomain(TD);
    expect([...(j?.authorities.keys() ?? [])]).toEqual(["jwt-key-1"]);
    expect(set.getJwtBundleForTrustDomain(TD)).toBe(j);
    expect(set.getJwtBundleForTrustDomain(OTHER)).toBeUndefined();
  });

  it("with and without return new sets and leave the original alone", () => {
    const empty = new BundleSet();
    const one = empty.with(valid);
    const two = one.with({ trustDomain: OTHER, x509Authorities: [], jwtAuthorities: new Map() });
    const back = two.without(TD);
    expect([empty.size, one.size, two.size, back.size]).toEqual([0, 1, 2, 1]);
    expect(back.has(TD)).toBe(false);
    expect(back.has(OTHER)).toBe(true);
    expect(two.trustDomains().map((t) => t.name)).toEqual(["example.org", "other.example"]);
    expect([...two].map((b) => b.trustDomain.name)).toEqual(["example.org", "other.example"]);
    // Replacing a domain's bundle keeps one entry for it.
    const replaced = two.with({ ...valid, jwtAuthorities: new Map() });
    expect(replaced.size).toBe(2);
    expect(replaced.getJwtBundleForTrustDomain(TD)?.isEmpty()).toBe(true);
    expect(two.getJwtBundleForTrustDomain(TD)?.isEmpty()).toBe(false);
  });
});
