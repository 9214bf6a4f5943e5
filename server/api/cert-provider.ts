/**
 * An in-memory grpc-js CertificateProvider: lets the server swap its TLS
 * identity (server SVID) and the CA bundle it requests client certificates
 * against, without restarting the listener, as CA keys rotate.
 */
import type { experimental } from "@grpc/grpc-js";

type Provider = experimental.CertificateProvider;
type CaListener = experimental.CaCertificateUpdateListener;
type IdListener = experimental.IdentityCertificateUpdateListener;

/** A certificate provider whose CA bundle and identity are set by the owner. */
export class MemoryCertificateProvider implements Provider {
  #ca: Buffer | null = null;
  #identity: { certificate: Buffer; privateKey: Buffer } | null = null;
  readonly #caListeners = new Set<CaListener>();
  readonly #idListeners = new Set<IdListener>();

  /** Sets the PEM CA certificates that client certificates are requested against. */
  setCaCertificates(pem: string): void {
    this.#ca = Buffer.from(pem);
    for (const l of this.#caListeners) l({ caCertificate: this.#ca });
  }

  /** The PEM certificate chain and key set last, or null before the first {@link setIdentity}. */
  get identity(): { readonly certificate: Buffer; readonly privateKey: Buffer } | null {
    return this.#identity;
  }

  /** Sets the PEM certificate chain and PKCS#8 PEM key the server presents. */
  setIdentity(certChainPem: string, privateKeyPem: string): void {
    this.#identity = { certificate: Buffer.from(certChainPem), privateKey: Buffer.from(privateKeyPem) };
    for (const l of this.#idListeners) l(this.#identity);
  }

  addCaCertificateListener(listener: CaListener): void {
    this.#caListeners.add(listener);
    // Asynchronously: grpc-js registers its own watcher only after adding this listener.
    queueMicrotask(() => {
      if (this.#ca && this.#caListeners.has(listener)) listener({ caCertificate: this.#ca });
    });
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.#caListeners.delete(listener);
  }

  addIdentityCertificateListener(listener: IdListener): void {
    this.#idListeners.add(listener);
    queueMicrotask(() => {
      if (this.#identity && this.#idListeners.has(listener)) listener(this.#identity);
    });
  }

  removeIdentityCertificateListener(listener: IdListener): void {
    this.#idListeners.delete(listener);
  }
}
