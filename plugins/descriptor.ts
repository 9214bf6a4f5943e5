/**
 * What every plugin folder exports: one descriptor naming the plugin's type
 * and name, and for each side it runs on (server, agent, or both for node
 * attestors) its config schema and a `create(config, deps)` factory.
 * `plugins/catalog.ts` lists the descriptors; the config schemas, the
 * generated config docs and the composition roots are built from that list.
 */
import type { z } from "zod";
import type { Logger } from "../common/log.js";

/** Plugin types, as SPIRE names them in the `plugins` config section. */
export type PluginType = "DataStore" | "KeyManager" | "NodeAttestor" | "Notifier" | "UpstreamAuthority" | "WorkloadAttestor";

/** Which binary a plugin half runs in. */
export type PluginSide = "server" | "agent";

/** A plugin instance; `close()` releases what it holds (called in reverse creation order). */
export interface PluginInstance {
  close?(): Promise<void> | void;
}

/**
 * How long one plugin's `close()` may take before the stop goes on without
 * it: the service group waits for every stop, and a server or agent told to
 * stop must stop (as the agent API gives calls in flight 5 s).
 */
export const PLUGIN_CLOSE_TIMEOUT_MS = 5_000;

/**
 * Closes plugin instances in reverse order of creation (a plugin may use one
 * created before it), skipping those without `close()`. A failing close is
 * logged and the others still close; a close still pending after `timeoutMs`
 * is logged and left behind. Never throws and always settles, so a stop goes on.
 */
export async function closePlugins(instances: readonly unknown[], log: Logger, timeoutMs: number = PLUGIN_CLOSE_TIMEOUT_MS): Promise<void> {
  for (const instance of [...instances].reverse()) {
    const p = instance as (PluginInstance & { readonly name?: unknown }) | undefined;
    if (typeof p?.close !== "function") continue;
    const plugin = typeof p.name === "string" ? p.name : undefined;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<"late">((resolve) => {
      timer = setTimeout(() => resolve("late"), timeoutMs);
    });
    // A close that fails after its time limit has nobody waiting for it: it is logged all the same.
    const closing = (async () => {
      try {
        await p.close?.();
      } catch (e) {
        log.error({ plugin, err: e }, "Plugin failed to close");
      }
    })();
    try {
      if ((await Promise.race([closing, late])) === "late") {
        log.error({ plugin, timeout_ms: timeoutMs }, "Plugin did not close in time; going on without it");
      }
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * The plugin instances one service creates, which it closes at its stop and
 * when its own start fails (its stop is then never called).
 *
 * @example
 * ```ts
 * start() { return this.#plugins.starting(() => this.#start()); } // #start: this.#plugins.add(createPlugins(…))
 * stop() { return this.#plugins.close(); }
 * ```
 */
export class OwnedPlugins {
  readonly #instances: unknown[] = [];
  readonly #log: Logger;

  constructor(log: Logger) {
    this.#log = log;
  }

  /** Records instances as they are created; returns them. */
  add<T>(instances: T[]): T[] {
    this.#instances.push(...instances);
    return instances;
  }

  /** Runs a start; if it throws, closes what was recorded so far and rethrows. */
  async starting(start: () => Promise<void>): Promise<void> {
    try {
      await start();
    } catch (e) {
      await this.close();
      throw e;
    }
  }

  /** Closes the recorded instances (see {@link closePlugins}) and forgets them. */
  close(): Promise<void> {
    return closePlugins(this.#instances.splice(0), this.#log);
  }
}

/** One side of a plugin: its config schema and factory. */
export interface PluginHalf<Deps, Instance> {
  /** One sentence for the generated config docs. */
  readonly description: string;
  /** Validates the plugin's own config section (`plugins.<Type>.<name>`); `{}` or YAML null when it has no settings. */
  readonly configSchema: z.ZodType;
  /** Builds the plugin from its validated config (the output of `configSchema`). */
  create(config: unknown, deps: Deps): Instance;
}

/**
 * Defines one side of a plugin with its config typed by its schema. The
 * composition root hands `create` the value the generated config schema
 * already validated with this very `configSchema`.
 */
export function pluginHalf<S extends z.ZodType, Deps, Instance>(half: {
  readonly description: string;
  readonly configSchema: S;
  readonly create: (config: z.output<S>, deps: Deps) => Instance;
}): PluginHalf<Deps, Instance> {
  return { description: half.description, configSchema: half.configSchema, create: (config, deps) => half.create(config as z.output<S>, deps) };
}

/** A plugin: its type, its name, and the halves it has. */
export interface PluginDescriptor<Type extends PluginType, ServerDeps = never, ServerInstance = never, AgentDeps = never, AgentInstance = never> {
  readonly type: Type;
  /** The key under `plugins.<Type>` in config (`disk`, `join_token`). */
  readonly name: string;
  readonly server?: PluginHalf<ServerDeps, ServerInstance>;
  readonly agent?: PluginHalf<AgentDeps, AgentInstance>;
}
