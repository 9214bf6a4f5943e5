/**
 * Witnessing around the started log service, from `transparency_log`:
 * the {@link WitnessClient} sending each checkpoint to `witnesses`, and
 * this server's own {@link Witness} of the logs in `witness.logs`, whose
 * Ed25519 key the key manager holds under {@link WITNESS_KEY_ID} (made at
 * the first start, kept by a disk or KMS key manager across restarts).
 */
import type { Logger } from "../../common/log.js";
import type { Metrics } from "../../common/metrics.js";
import type { KeyManager } from "../../plugins/keymanager/types.js";
import { createCosigner } from "../../spiffe/tlog/cosignature.js";
import type { Datastore } from "../datastore/index.js";
import type { TlogService } from "./log-service.js";
import type { TlogReadView } from "./types.js";
import { WitnessClient, type SignedCheckpoint } from "./witness-client.js";
import { Witness, type WitnessEndpoint } from "./witness.js";

/** The key manager's ID of this server's witness key. */
export const WITNESS_KEY_ID = "tlog-witness-1";

/** The `transparency_log` keys about witnesses. */
export interface WitnessingSettings {
  readonly witnesses?: readonly { readonly url: string; readonly key: string }[] | undefined;
  readonly witness_quorum?: number | undefined;
  readonly witness_timeout?: number | undefined;
  readonly witness?: { readonly name?: string | undefined; readonly logs: readonly { readonly origin?: string | undefined; readonly keys: readonly string[] }[] } | undefined;
}

/** What {@link startWitnessing} returns. */
export interface Witnessing {
  /** The log's view with cosigned checkpoints (the log's own when no witness is configured). */
  readonly view: TlogReadView & Pick<TlogService, "rotateKey" | "checkpoint">;
  /** This server's witness endpoint, when it witnesses logs. */
  readonly witness: WitnessEndpoint | undefined;
  checkpointSigned(cp: SignedCheckpoint): void;
  close(): Promise<void>;
}

/** Dependencies of {@link startWitnessing}. */
export interface WitnessingDeps {
  readonly settings: WitnessingSettings;
  readonly log: TlogService;
  readonly datastore: Pick<Datastore, "putTlogCheckpoint" | "latestWitnessCheckpoint" | "advanceWitnessCheckpoint">;
  readonly keyManager: Pick<KeyManager, "getKey" | "generateKey">;
  readonly trustDomain: string;
  readonly serverId: string;
  readonly now: () => Date;
  readonly logger?: Logger | undefined;
  readonly metrics?: Metrics | undefined;
}

/**
 * Starts witnessing; the current checkpoint is sent to the witnesses at once.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` / `ERR_TLOG_MALFORMED` for bad keys in the settings.
 */
export async function startWitnessing(d: WitnessingDeps): Promise<Witnessing> {
  const s = d.settings;
  let witness: Witness | undefined;
  if (s.witness !== undefined) {
    const signer = (await d.keyManager.getKey(WITNESS_KEY_ID)) ?? (await d.keyManager.generateKey(WITNESS_KEY_ID, "ed25519"));
    const name = s.witness.name ?? `${d.trustDomain}/sigil/witness`;
    witness = new Witness({
      datastore: d.datastore,
      cosigner: createCosigner(name, signer.publicKey, (m) => signer.sign(m, { hash: "sha512" })),
      logs: s.witness.logs.map((l) => ({ origin: l.origin ?? (l.keys[0] ?? "").split("+")[0] ?? "", keys: l.keys })),
      now: d.now,
      log: d.logger,
      metrics: d.metrics,
    });
    d.logger?.info({ witness_key: witness.vkey, logs: s.witness.logs.length }, "tlog witness: cosigning checkpoints of the configured logs");
  }
  const log = d.log;
  const client =
    (s.witnesses?.length ?? 0) > 0
      ? new WitnessClient({
          view: log,
          datastore: d.datastore,
          serverId: d.serverId,
          witnesses: s.witnesses ?? [],
          quorum: s.witness_quorum,
          timeoutMs: s.witness_timeout,
          now: d.now,
          log: d.logger,
          metrics: d.metrics,
        })
      : undefined;
  const view = client === undefined ? log : Object.assign(client.view(log), { rotateKey: () => log.rotateKey(), checkpoint: () => log.checkpoint() });
  const current = log.latestCheckpoint();
  if (client !== undefined && current !== undefined) client.checkpointSigned(current);
  return {
    view,
    witness,
    checkpointSigned: (cp) => client?.checkpointSigned(cp),
    close: async () => client?.close(),
  };
}
