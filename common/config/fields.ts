/**
 * Config fields and sections the server and agent schemas share, so both
 * files validate (and document) them the same way.
 */
import { z } from "zod";
import { isSigilError } from "../../spiffe/errors.js";
import { parseTrustDomain } from "../../spiffe/id.js";

/** Log levels; SPIRE's upper-case spellings are accepted and lowered. */
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;

/** A log level as the logger takes it. */
export type ConfigLogLevel = (typeof LOG_LEVELS)[number];

/** A log level, lowered. */
export const logLevel = z.enum([...LOG_LEVELS, "DEBUG", "INFO", "WARN", "ERROR"]).transform((v) => v.toLowerCase() as ConfigLogLevel);

/** A TCP port (0 picks a free one). */
export const port = z.number().int().min(0).max(65535);

/** A host name or address. */
export const host = z.string().min(1);

/** A trust domain as a bare name (`example.org`), checked by the SPIFFE parser. */
export const trustDomainName = z.string().superRefine((value, ctx) => {
  try {
    parseTrustDomain(value);
  } catch (e) {
    if (!isSigilError(e)) throw e;
    ctx.addIssue({ code: "custom", message: `invalid trust domain: ${e.message.replace(/^trust domain: /, "")}` });
  }
});

/** An absolute URL path such as `/ready`. */
export const httpPath = z.string().regex(/^\/[^\s?#]*$/, { error: "must be an absolute URL path such as \"/ready\"" });

/** A plugin with no settings: written `name:` (YAML null) or `name: {}`. */
export function noSettings(description?: string) {
  const schema = z
    .strictObject({})
    .nullable()
    .transform((v): Record<string, never> => v ?? {});
  return description === undefined ? schema : schema.describe(description);
}

/** The `health_checks` section; the texts say what this process's endpoints mean. */
export function healthChecksSection(texts: { readonly listenerEnabled: string; readonly readyPath: string }) {
  return z
    .strictObject({
      listener_enabled: z.boolean().default(false).describe(texts.listenerEnabled),
      bind_address: host.default("127.0.0.1").describe("Address of the HTTP health listener."),
      bind_port: port.default(8080).describe("Port of the HTTP health listener."),
      live_path: httpPath.default("/live").describe("Liveness path: 200 while the process is up."),
      ready_path: httpPath.default("/ready").describe(texts.readyPath),
    })
    .describe("HTTP liveness and readiness endpoints.");
}

/** The `telemetry` section. */
export const telemetrySection = z
  .strictObject({
    prometheus: z
      .strictObject({
        host: host.default("127.0.0.1").describe("Address to serve `/metrics` on."),
        port: port.describe("Port to serve `/metrics` on."),
      })
      .optional()
      .describe("Prometheus scrape endpoint."),
  })
  .describe("Metrics export.");
