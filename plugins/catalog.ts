/**
 * The plugin catalog: every plugin Sigil ships, by type. The `plugins` section
 * of both config schemas (and so `server/config.schema.json`,
 * `agent/config.schema.json` and the generated configuration docs) and the
 * composition roots are built from this list. Adding a plugin is one folder
 * (`plugins/<type>/<name>/index.ts` exporting its descriptor) and one line here.
 */
import { z } from "zod";
import { sqlDataStorePlugin } from "./datastore/sql/index.js";
import type { PluginDescriptor, PluginSide, PluginType } from "./descriptor.js";
import { diskKeyManagerPlugin } from "./keymanager/disk/index.js";
import { memoryKeyManagerPlugin } from "./keymanager/memory/index.js";
import { joinTokenNodeAttestorPlugin } from "./nodeattestor/join_token/index.js";
import { k8sPsatNodeAttestorPlugin } from "./nodeattestor/k8s_psat/index.js";
import { tpmNodeAttestorPlugin } from "./nodeattestor/tpm/index.js";
import { k8sBundleNotifierPlugin } from "./notifier/k8sbundle/index.js";
import { diskUpstreamAuthorityPlugin } from "./upstreamauthority/disk/index.js";
import { sigilUpstreamAuthorityPlugin } from "./upstreamauthority/sigil/index.js";
import { k8sWorkloadAttestorPlugin } from "./workloadattestor/k8s/index.js";
import { unixWorkloadAttestorPlugin } from "./workloadattestor/unix/index.js";

/** Every plugin, by type. */
export const PLUGIN_CATALOG = {
  DataStore: [sqlDataStorePlugin],
  KeyManager: [diskKeyManagerPlugin, memoryKeyManagerPlugin],
  NodeAttestor: [joinTokenNodeAttestorPlugin, k8sPsatNodeAttestorPlugin, tpmNodeAttestorPlugin],
  Notifier: [k8sBundleNotifierPlugin],
  UpstreamAuthority: [diskUpstreamAuthorityPlugin, sigilUpstreamAuthorityPlugin],
  WorkloadAttestor: [unixWorkloadAttestorPlugin, k8sWorkloadAttestorPlugin],
} as const satisfies { readonly [T in PluginType]: readonly PluginDescriptor<T, never, unknown, never, unknown>[] };

/** How many plugins of a type a present section names. */
export type PluginCount = "exactly-one" | "at-least-one" | "any";

/** One plugin type's section in a binary's config. */
export interface PluginSectionRule {
  readonly type: PluginType;
  readonly count: PluginCount;
  /** The section may be left out altogether (UpstreamAuthority). */
  readonly optional?: boolean;
  readonly description: string;
}

/** The server's plugin sections, in the order they appear in config and docs. */
export const SERVER_PLUGIN_SECTIONS: readonly PluginSectionRule[] = [
  { type: "DataStore", count: "exactly-one", description: "Where registration entries, agents, bundles and join tokens are stored." },
  { type: "KeyManager", count: "exactly-one", description: "Holds the CA and JWT signing keys." },
  { type: "NodeAttestor", count: "at-least-one", description: "How agents prove which node they run on." },
  { type: "UpstreamAuthority", count: "exactly-one", optional: true, description: "Signs the server's CA with an upstream CA instead of self-signing." },
  { type: "Notifier", count: "any", optional: true, description: "Told of every change of the trust domain's bundle, to publish it elsewhere (a Kubernetes ConfigMap)." },
];

/** The agent's plugin sections. */
export const AGENT_PLUGIN_SECTIONS: readonly PluginSectionRule[] = [
  { type: "NodeAttestor", count: "exactly-one", description: "How the agent proves which node it runs on." },
  { type: "WorkloadAttestor", count: "at-least-one", description: "How Workload API callers are identified; the selectors of every configured attestor are combined." },
];

/** A validated `plugins.<Type>` section: plugin name to its validated config. */
export type PluginSection = Readonly<Record<string, unknown>>;

/** A validated `plugins` section. */
export type PluginsConfig = Readonly<Partial<Record<PluginType, PluginSection>>>;

/** The descriptors of one type that have a half for `side`. */
export function pluginsFor(side: PluginSide, type: PluginType): readonly PluginDescriptor<PluginType, never, unknown, never, unknown>[] {
  return (PLUGIN_CATALOG[type] as readonly PluginDescriptor<PluginType, never, unknown, never, unknown>[]).filter((d) => d[side] !== undefined);
}

function countRule(rule: PluginSectionRule) {
  return (value: Record<string, unknown>, ctx: z.RefinementCtx<Record<string, unknown>>): void => {
    const names = Object.keys(value).filter((k) => value[k] !== undefined);
    const { type, count } = rule;
    if (names.length === 0 && count !== "any") {
      ctx.addIssue({ code: "custom", message: count === "exactly-one" ? `one ${type} plugin must be configured` : `at least one ${type} plugin must be configured` });
    } else if (names.length > 1 && count === "exactly-one") {
      ctx.addIssue({ code: "custom", message: `exactly one ${type} plugin may be configured, got ${names.length}: ${names.join(", ")}` });
    }
  };
}

/**
 * The `plugins` section of one binary's config schema, generated from the
 * catalog: `plugins.<Type>.<name>` holds that plugin's own config schema.
 * An unknown plugin name is refused with the known names of its type (see
 * `configIssuesFromZod`).
 */
export function pluginsConfigSchema(side: PluginSide): z.ZodType<PluginsConfig> {
  const rules = side === "server" ? SERVER_PLUGIN_SECTIONS : AGENT_PLUGIN_SECTIONS;
  const shape: Record<string, z.ZodType> = {};
  for (const rule of rules) {
    const plugins: Record<string, z.ZodType> = {};
    for (const d of pluginsFor(side, rule.type)) {
      const half = d[side];
      if (half !== undefined) plugins[d.name] = half.configSchema.optional().describe(half.description);
    }
    const section = z
      .strictObject(plugins)
      .superRefine(countRule(rule))
      .meta({ ...(rule.count === "any" ? {} : { minProperties: 1 }), ...(rule.count === "exactly-one" ? { maxProperties: 1 } : {}) })
      .describe(rule.description);
    shape[rule.type] = rule.optional === true ? section.optional() : section;
  }
  return z.strictObject(shape).describe("Plugins, keyed by plugin type and then plugin name, as in SPIRE.") as unknown as z.ZodType<PluginsConfig>;
}

/**
 * Creates the configured plugins of one type for one side, in config order.
 *
 * @example
 * ```ts
 * const [keyManager] = createPlugins("server", PLUGIN_CATALOG.KeyManager, config.plugins.KeyManager, { signingPool });
 * ```
 */
export function createPlugins<D extends PluginDescriptor<PluginType, never, unknown, never, unknown>, S extends PluginSide>(
  side: S,
  descriptors: readonly D[],
  section: PluginSection | undefined,
  deps: DepsOf<D, S>,
): Array<InstanceOf<D, S>> {
  const out: Array<InstanceOf<D, S>> = [];
  try {
    for (const [name, config] of Object.entries(section ?? {})) {
      if (config === undefined) continue;
      const half = descriptors.find((d) => d.name === name)?.[side] as { create(config: unknown, deps: DepsOf<D, S>): InstanceOf<D, S> } | undefined;
      // The config schema already refused unknown names; this guards a caller passing the wrong list.
      if (half === undefined) throw new Error(`plugin catalog: no ${side} plugin named ${JSON.stringify(name)} in the list given`);
      out.push(half.create(config, deps));
    }
  } catch (e) {
    // The caller never receives the ones made before the failure, so they are closed here
    // (in reverse order); the error that matters is the one thrown.
    for (const made of out.reverse()) {
      const close = (made as { close?: () => unknown } | undefined)?.close;
      if (typeof close === "function") void Promise.resolve().then(() => close.call(made)).catch(() => undefined);
    }
    throw e;
  }
  return out;
}

/** The deps a side of descriptor `D` takes. */
export type DepsOf<D, S extends PluginSide> = D extends PluginDescriptor<PluginType, infer SD, unknown, infer AD, unknown> ? (S extends "server" ? SD : AD) : never;

/** The instance a side of descriptor `D` creates. */
export type InstanceOf<D, S extends PluginSide> = D extends PluginDescriptor<PluginType, never, infer SI, never, infer AI> ? (S extends "server" ? SI : AI) : never;
