/**
 * The workload credentials a log holds so far, as `log verify` reads it in
 * order, so that each `delivered` entry can be checked against the entry it
 * refers to: the same credential (serial or JWT hash), issued to the same
 * agent for the same SPIFFE ID.
 *
 * Memory is bounded per credential and kept small for logs of millions of
 * entries: the lookup key, and three numbers in typed arrays (the entry's
 * index, and its agent and SPIFFE ID as numbers into a table holding each
 * distinct string once: agents and IDs repeat across entries).
 */

/** What a credential was issued as. */
export interface IssuedCredential {
  /** Log index of its entry. */
  readonly index: number;
  /** The agent it was issued to, when the entry names one. */
  readonly agentId: string | undefined;
  readonly spiffeId: string;
}

/** How a credential is named: an X.509-SVID's serial (canonical hex) or a JWT-SVID's SHA-256 (hex). */
export type CredentialName = { readonly serial: string } | { readonly jwtSha256: string };

const INITIAL_CAPACITY = 1024;
/** The string-table number of "no agent". */
const NO_AGENT = -1;

/** See the module comment. */
export class IssuedCredentials {
  readonly #slots = new Map<string, number>();
  readonly #stringIds = new Map<string, number>();
  readonly #strings: string[] = [];
  #index = new Float64Array(INITIAL_CAPACITY);
  #agent = new Int32Array(INITIAL_CAPACITY);
  #spiffeId = new Int32Array(INITIAL_CAPACITY);

  /** Credentials held. */
  get size(): number {
    return this.#slots.size;
  }

  /** Records a credential's entry; a name already recorded keeps its first entry. */
  add(name: CredentialName, credential: IssuedCredential): void {
    const key = keyOf(name);
    if (this.#slots.has(key)) return;
    const slot = this.#slots.size;
    if (slot === this.#index.length) this.#grow();
    this.#index[slot] = credential.index;
    this.#agent[slot] = credential.agentId === undefined ? NO_AGENT : this.#intern(credential.agentId);
    this.#spiffeId[slot] = this.#intern(credential.spiffeId);
    this.#slots.set(key, slot);
  }

  /** The first entry recorded under this name. */
  get(name: CredentialName): IssuedCredential | undefined {
    const slot = this.#slots.get(keyOf(name));
    if (slot === undefined) return undefined;
    const agent = this.#agent[slot] as number;
    return {
      index: this.#index[slot] as number,
      agentId: agent === NO_AGENT ? undefined : this.#strings[agent],
      spiffeId: this.#strings[this.#spiffeId[slot] as number] as string,
    };
  }

  #intern(s: string): number {
    let id = this.#stringIds.get(s);
    if (id === undefined) {
      id = this.#strings.length;
      this.#strings.push(s);
      this.#stringIds.set(s, id);
    }
    return id;
  }

  #grow(): void {
    const n = this.#index.length * 2;
    const index = new Float64Array(n);
    index.set(this.#index);
    const agent = new Int32Array(n);
    agent.set(this.#agent);
    const spiffeId = new Int32Array(n);
    spiffeId.set(this.#spiffeId);
    this.#index = index;
    this.#agent = agent;
    this.#spiffeId = spiffeId;
  }
}

function keyOf(name: CredentialName): string {
  return "serial" in name ? `s${name.serial}` : `j${name.jwtSha256}`;
}
