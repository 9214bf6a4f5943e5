/**
 * The `https_web` serving certificate of the bundle endpoint, read from a
 * certificate (chain) file and a key file and reloaded when they change:
 * on a change event in either file's directory (which also sees atomic
 * renames and Kubernetes secret symlink swaps) and every `file_sync_interval`
 * in case an event was missed. A reload that fails (unreadable file, no
 * certificate, key not matching) logs an error naming the file and keeps the
 * previous certificate, so a half-written renewal never takes the endpoint down.
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync, watch, type FSWatcher } from "node:fs";
import path from "node:path";
import type { Logger } from "../../common/log.js";
import { SigilError } from "../../spiffe/errors.js";
import type { ServingCertificate, ServingCertificateSource } from "./bundle-endpoint.js";

/** Options of {@link ServingCertFile}. */
export interface ServingCertFileOptions {
  /** PEM: the serving certificate, then its intermediates. */
  readonly certFilePath: string;
  /** PEM: the certificate's private key. */
  readonly keyFilePath: string;
  /** How often the files are re-read without a change event. */
  readonly syncIntervalMs: number;
  /** Config key of the file pair, put in front of start-up errors. */
  readonly configKey: string;
  readonly log: Logger;
}

/** Wait after a change event before reading, so a writer's several writes land in one reload. */
const DEBOUNCE_MS = 100;

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g;

/**
 * Reads and checks the pair.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the file at fault
 */
function readPair(certFilePath: string, keyFilePath: string): ServingCertificate {
  const read = (file: string, what: string): string => {
    try {
      return readFileSync(file, "utf8");
    } catch (e) {
      throw new SigilError("ERR_INVALID_ARGUMENT", `${file}: cannot read the ${what}: ${(e as Error).message}`, { cause: e });
    }
  };
  const certChainPem = read(certFilePath, "certificate file");
  const privateKeyPem = read(keyFilePath, "key file");
  const blocks = certChainPem.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) throw new SigilError("ERR_INVALID_ARGUMENT", `${certFilePath}: no PEM certificate found`);
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(blocks[0] as string);
    for (const b of blocks.slice(1)) new X509Certificate(b);
  } catch (e) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `${certFilePath}: unreadable certificate: ${(e as Error).message}`, { cause: e });
  }
  let key: ReturnType<typeof createPrivateKey>;
  try {
    key = createPrivateKey(privateKeyPem);
  } catch (e) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `${keyFilePath}: unreadable private key: ${(e as Error).message}`, { cause: e });
  }
  if (!leaf.checkPrivateKey(key)) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `${keyFilePath}: the private key does not match the certificate in ${certFilePath}`);
  }
  return { certChainPem, privateKeyPem };
}

/** The file-backed serving certificate; see the module comment. */
export class ServingCertFile implements ServingCertificateSource {
  readonly #o: ServingCertFileOptions;
  #current: ServingCertificate | undefined;
  readonly #listeners = new Set<() => void>();
  #watchers: FSWatcher[] = [];
  #timer: NodeJS.Timeout | undefined;
  #debounce: NodeJS.Timeout | undefined;

  constructor(options: ServingCertFileOptions) {
    this.#o = options;
  }

  /**
   * Loads the pair and starts following the files.
   *
   * @throws SigilError `ERR_INVALID_ARGUMENT` naming the config key and the file at fault
   */
  start(): void {
    const { certFilePath, keyFilePath, configKey } = this.#o;
    try {
      this.#current = readPair(certFilePath, keyFilePath);
    } catch (e) {
      throw new SigilError("ERR_INVALID_ARGUMENT", `config: ${configKey}: ${(e as Error).message}`, { cause: e });
    }
    for (const dir of new Set([path.dirname(path.resolve(certFilePath)), path.dirname(path.resolve(keyFilePath))])) {
      try {
        const w = watch(dir, { persistent: false }, () => this.#scheduleSync());
        w.on("error", (e) => this.#o.log.warn({ dir, err: e.message }, "bundle endpoint: watching the serving certificate's directory failed; reloading on the sync interval only"));
        this.#watchers.push(w);
      } catch (e) {
        this.#o.log.warn({ dir, err: (e as Error).message }, "bundle endpoint: cannot watch the serving certificate's directory; reloading on the sync interval only");
      }
    }
    this.#timer = setInterval(() => this.sync(), this.#o.syncIntervalMs);
    this.#timer.unref();
  }

  /** Stops following the files. */
  stop(): void {
    for (const w of this.#watchers) w.close();
    this.#watchers = [];
    clearInterval(this.#timer);
    clearTimeout(this.#debounce);
  }

  /**
   * Re-reads the files now. Returns true when the certificate changed; on a
   * broken file logs an error naming it and keeps the previous certificate.
   */
  sync(): boolean {
    let next: ServingCertificate;
    try {
      next = readPair(this.#o.certFilePath, this.#o.keyFilePath);
    } catch (e) {
      this.#o.log.error({ err: (e as Error).message }, "bundle endpoint: cannot reload the serving certificate; still serving the previous one");
      return false;
    }
    const prev = this.#current;
    if (prev !== undefined && prev.certChainPem === next.certChainPem && prev.privateKeyPem === next.privateKeyPem) return false;
    this.#current = next;
    this.#o.log.info({ cert_file: this.#o.certFilePath }, "bundle endpoint: serving certificate reloaded");
    for (const l of this.#listeners) l();
    return true;
  }

  current(): ServingCertificate {
    if (this.#current === undefined) throw new SigilError("ERR_UNAVAILABLE", "bundle endpoint: the serving certificate is not loaded yet");
    return this.#current;
  }

  onChange(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #scheduleSync(): void {
    clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => this.sync(), DEBOUNCE_MS);
    this.#debounce.unref();
  }
}
