/**
 * JWT-SVID issuance rate against raw P-256 signing. Baseline in the same run:
 * `crypto.sign` (SHA-256, IEEE P1363) on a buffer the size of a JWT-SVID's
 * signing input. Three interleaved passes; medians. Ratio target: signJwtSvid
 * reaches at least half the baseline (the hand-built JWS exists to beat jose's ~0.4).
 */
import { generateKeyPairSync, sign as cryptoSign } from "node:crypto";
import { parseSpiffeId } from "../spiffe/id.js";
import { createKeyObjectSigner } from "../spiffe/signer.js";
import { signJwtSvid } from "../spiffe/jwt/sign.js";
import { median, rateSync, report } from "./harness.js";

const TARGET = 0.5;
const PASSES = 3;

const { privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
const signer = createKeyObjectSigner(privateKey, "bench-kid");
const spiffeId = parseSpiffeId("spiffe://example.org/ns/prod/sa/web");
const audience = ["spiffe://example.org/api"];
const issuedAt = new Date();
const expiresAt = new Date(issuedAt.getTime() + 5 * 60_000);

const issue = (): string => signJwtSvid({ spiffeId, audience, issuedAt, expiresAt, signer, extraClaims: { iss: "https://oidc.example.org" } });
// The raw baseline signs input of the same length as the token's header.payload.
const sample = issue();
const payload = Buffer.alloc(sample.lastIndexOf("."), 0x61);
const raw = (): void => {
  cryptoSign("sha256", payload, { key: privateKey, dsaEncoding: "ieee-p1363" });
};

const rawRates: number[] = [];
const jwtRates: number[] = [];
for (let pass = 0; pass < PASSES; pass++) {
  rawRates.push(rateSync(raw));
  jwtRates.push(rateSync(() => void issue()));
}
const base = median(rawRates);
const value = median(jwtRates);
report({
  name: "jwt-svid-issue",
  value,
  unit: "ops/s",
  baseline: { value: base, unit: "ops/s", what: `crypto.sign P-256 ieee-p1363 on ${payload.length} bytes` },
  target: { kind: "ratio", op: ">=", bound: TARGET },
});
