/**
 * A MUNGE stand-in for unit tests: credentials that look like MUNGE's
 * (`MUNGE:...:`, ASCII, no NUL) and a decoder that behaves as munged does
 * where the tests look: a credential made with another key is invalid, one
 * decoded before is replayed. It can also be told to fail as libmunge does
 * when munged is not running.
 *
 * @module
 */

import { type Munge, MungeError, MungeStatus } from "../../../lib/kernel/munge.ts";

/** A fake {@link Munge}: one "key", one uid, and a record of what it did. */
export class FakeMunge implements Munge {
  readonly socketPath = "/fake/munge.socket";
  /** Every credential {@link encode} returned, in order. */
  readonly encoded: string[] = [];
  /** Every credential {@link decode} accepted, in order. */
  readonly decoded: string[] = [];
  /** When set, {@link encode} and {@link decode} fail with it (munged down, say). */
  failure: MungeError | undefined;
  readonly #seen = new Set<string>();

  constructor(
    /** The uid credentials vouch for. */
    readonly uid = 0,
    /** Credentials decode only where the keys are equal, as with munged. */
    readonly key = "key-a",
  ) {}

  /** The error libmunge gives when munged's socket is missing. */
  static mungedDown(): MungeError {
    return new MungeError(MungeStatus.socket, "munged is not running (no socket at /fake)");
  }

  encode(): Promise<string> {
    if (this.failure) return Promise.reject(this.failure);
    const credential = `MUNGE:${this.key}.${this.uid}.${this.encoded.length}:`;
    this.encoded.push(credential);
    return Promise.resolve(credential);
  }

  decode(credential: string): Promise<{ uid: number; gid: number }> {
    if (this.failure) return Promise.reject(this.failure);
    const match = /^MUNGE:([^.]+)\.(\d+)\.\d+:$/.exec(credential);
    if (!match) {
      return Promise.reject(new MungeError(MungeStatus.badCredential, "Invalid credential format"));
    }
    if (match[1] !== this.key) {
      return Promise.reject(new MungeError(MungeStatus.credentialInvalid, "Invalid credential"));
    }
    if (this.#seen.has(credential)) {
      return Promise.reject(new MungeError(MungeStatus.credentialReplayed, "Replayed credential"));
    }
    this.#seen.add(credential);
    this.decoded.push(credential);
    return Promise.resolve({ uid: Number(match[2]), gid: Number(match[2]) });
  }
}
