/**
 * AttestAgent treats an agent whose call deadline has passed as gone (so its
 * join token is not spent on an SVID it will never receive), also before the
 * server has read the client's cancel.
 */
import { expect, it } from "vitest";
import { deadlinePassed } from "../../../../server/api/agent-api.js";

it("a deadline in the past has passed; one in the future, or none (Infinity), has not", () => {
  expect(deadlinePassed(new Date(Date.now() - 1))).toBe(true);
  expect(deadlinePassed(Date.now() - 1)).toBe(true);
  expect(deadlinePassed(new Date(Date.now() + 60_000))).toBe(false);
  expect(deadlinePassed(Number.POSITIVE_INFINITY)).toBe(false);
});
