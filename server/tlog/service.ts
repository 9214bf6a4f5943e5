/**
 * The `transparency-log` service: the {@link TlogService} as the server's
 * composition root starts it (after `ca`, whose key manager holds the log
 * key), and the hooks the issuance path and the CA manager call. Those hooks
 * exist before the service starts: credentials and authority events are
 * appended through the datastore (which is started first), so the CA's own
 * start-up events are logged too; the tree catches up when the service starts.
 */
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import type { Service } from "../../common/service.js";
import { SigilError } from "../../spiffe/errors.js";
import type { KeyManager } from "../../plugins/keymanager/types.js";
import type { Datastore, TlogEntryInput } from "../datastore/index.js";
import { authorityEntry, credentialLogInputs, toTlogInput, type LoggedAuthorityEvent, type LoggedCredential } from "./entry.js";
import { TlogService, type AppendedRun, type IssuanceLogSink } from "./log-service.js";
import type { TlogReadView } from "./types.js";
import { startWitnessing, type Witnessing, type WitnessingSettings } from "./witnessing.js";
import type { WitnessEndpoint } from "./witness.js";

/** Dependencies of the {@link TransparencyLogService}. */
export interface TransparencyLogServiceDeps {
  /** The datastore service, started before this one. */
  readonly datastore: { readonly datastore: Datastore };
  /** The key manager holding the log key, once the CA has started. */
  readonly keyManager: () => KeyManager;
  readonly trustDomain: string;
  /** This server instance's name among those sharing the database. */
  readonly serverId: string;
  readonly now: () => Date;
  readonly checkpointIntervalMs: number;
  readonly checkpointBatch: number;
  readonly log: Logger;
  /** Witnesses to send checkpoints to, and the logs this server witnesses (both optional). */
  readonly witnessing?: WitnessingSettings | undefined;
  readonly metrics?: Metrics | undefined;
}

/** See the module comment. */
export class TransparencyLogService implements Service, IssuanceLogSink {
  readonly name = "transparency-log";
  readonly #d: TransparencyLogServiceDeps;
  #log: TlogService | undefined;
  #witnessing: Witnessing | undefined;

  constructor(deps: TransparencyLogServiceDeps) {
    this.#d = deps;
  }

  /** The started log, for the tiles server and the admin API. */
  get view(): TlogReadView & Pick<TlogService, "rotateKey" | "checkpoint"> {
    if (!this.#log) throw new SigilError("ERR_UNAVAILABLE", "tlog: not started");
    return this.#witnessing?.view ?? this.#log;
  }

  /** This server's witness endpoint (`transparency_log.witness`), undefined when it witnesses no log. */
  get witness(): WitnessEndpoint | undefined {
    return this.#witnessing?.witness;
  }

  async start(): Promise<void> {
    this.#log = await TlogService.start({
      datastore: this.#d.datastore.datastore,
      keyManager: this.#d.keyManager(),
      trustDomain: this.#d.trustDomain,
      serverId: this.#d.serverId,
      now: this.#d.now,
      log: this.#d.log,
      checkpointIntervalMs: this.#d.checkpointIntervalMs,
      checkpointBatch: this.#d.checkpointBatch,
      onCheckpoint: (cp) => this.#witnessing?.checkpointSigned(cp),
    });
    if (this.#d.witnessing !== undefined) {
      try {
        this.#witnessing = await startWitnessing({
          settings: this.#d.witnessing,
          log: this.#log,
          datastore: this.#d.datastore.datastore,
          keyManager: this.#d.keyManager(),
          trustDomain: this.#d.trustDomain,
          serverId: this.#d.serverId,
          now: this.#d.now,
          logger: this.#d.log,
          metrics: this.#d.metrics,
        });
      } catch (e) {
        // A failed start is not stopped by the service group: stop the log's cadence here.
        await this.#log.close();
        throw e;
      }
    }
  }

  async stop(): Promise<void> {
    await this.#witnessing?.close();
    await this.#log?.close();
  }

  credentialEntries(credentials: readonly LoggedCredential[]): TlogEntryInput[] {
    return credentialLogInputs(credentials);
  }

  appended(count: number, run?: AppendedRun): void {
    this.#log?.appended(count, run);
  }

  /** The CA manager's `onAuthorityEvent`: one `authority` entry, committed before it resolves. */
  readonly onAuthorityEvent = async (e: LoggedAuthorityEvent): Promise<void> => {
    await this.#d.datastore.datastore.recordIssuances([], [toTlogInput(authorityEntry(e))]);
    this.appended(1);
  };
}
