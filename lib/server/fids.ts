/**
 * A connection's fids. Requests run concurrently, so a Tclunk can arrive
 * while a Tread on the same fid is still reading: the fid leaves the table at
 * once (its number is free for reuse), but its file is closed only when the
 * last operation using it is done.
 *
 * @module
 */

import type { FileHandle } from "node:fs/promises";
import { P9Error } from "../errors.ts";
import { Errno } from "../errno.ts";
import type { Node } from "./exports.ts";

/** What an open fid reads from. */
export type Opened =
  | { kind: "file"; handle: FileHandle; writable: boolean }
  | { kind: "dir"; entries: Node[] };

/** One fid. */
export class Fid {
  opened: Opened | undefined;
  /** True while a Tlopen is opening it (a second Tlopen is refused). */
  opening = false;
  #busy = 0;
  #clunked = false;

  constructor(readonly node: Node) {}

  /** Run `op` with the fid held open (a concurrent clunk waits for it to finish). */
  async use<T>(op: () => Promise<T>): Promise<T> {
    this.#busy++;
    try {
      return await op();
    } finally {
      this.#busy--;
      if (this.#clunked && this.#busy === 0) this.#release();
    }
  }

  /** Forget the fid; its file closes now or when its last operation ends. */
  clunk(): void {
    if (this.#clunked) return;
    this.#clunked = true;
    if (this.#busy === 0) this.#release();
  }

  #release(): void {
    const opened = this.opened;
    this.opened = undefined;
    if (opened?.kind === "file") opened.handle.close().catch(() => {});
  }
}

/**
 * An authentication fid (Tauth): the credential the client writes into it,
 * for the attach that names it (lib/server/auth.ts checks it).
 */
export class AuthFid {
  #credential = new Uint8Array(0);

  constructor(
    /** The uid the Tauth named (n_uname); the attach must name the same. */
    readonly nUname: number,
    /** Most credential bytes accepted. */
    readonly maxBytes: number,
  ) {}

  /** Append `data` written at `offset`, which must be where the credential ends so far. */
  write(offset: bigint, data: Uint8Array): number {
    const sofar = this.#credential;
    if (offset !== BigInt(sofar.length)) {
      throw new P9Error(
        Errno.EINVAL,
        `auth: write at ${offset}, the credential ends at ${sofar.length}`,
      );
    }
    if (sofar.length + data.length > this.maxBytes) {
      throw new P9Error(Errno.EFBIG, `auth: a credential longer than ${this.maxBytes} bytes`);
    }
    // A credential is a few hundred bytes, written once or a few times.
    this.#credential = new Uint8Array(sofar.length + data.length);
    this.#credential.set(sofar);
    this.#credential.set(data, sofar.length);
    return data.length;
  }

  /** The credential written so far, as text ("" when none was). */
  credential(): string {
    return new TextDecoder().decode(this.#credential);
  }

  clunk(): void {}
}

/** The fid table of one connection, with a bound so a client cannot exhaust file descriptors. */
export class FidTable {
  readonly #fids = new Map<number, Fid | AuthFid>();

  constructor(readonly maxFids: number) {}

  get size(): number {
    return this.#fids.size;
  }

  /** The file fid `fid`; EBADF when there is none (an authentication fid is not one). */
  get(fid: number, operation: string): Fid {
    const found = this.#fids.get(fid);
    if (!found) throw new P9Error(Errno.EBADF, `${operation}: unknown fid ${fid}`);
    if (found instanceof AuthFid) {
      throw new P9Error(Errno.EBADF, `${operation}: fid ${fid} is an authentication fid`);
    }
    return found;
  }

  /** The authentication fid `fid`, or undefined when `fid` is not one. */
  getAuth(fid: number): AuthFid | undefined {
    const found = this.#fids.get(fid);
    return found instanceof AuthFid ? found : undefined;
  }

  has(fid: number): boolean {
    return this.#fids.has(fid);
  }

  /** Add a new fid; `replace` allows Twalk's newfid == fid. */
  add(fid: number, entry: Fid | AuthFid, operation: string, replace = false): void {
    const old = this.#fids.get(fid);
    if (old && !replace) throw new P9Error(Errno.EEXIST, `${operation}: fid ${fid} is in use`);
    if (!old && this.#fids.size >= this.maxFids) {
      throw new P9Error(Errno.EMFILE, `${operation}: more than ${this.maxFids} fids`);
    }
    old?.clunk();
    this.#fids.set(fid, entry);
  }

  /** Remove and clunk a fid. */
  clunk(fid: number, operation: string): void {
    const found = this.#fids.get(fid);
    if (!found) throw new P9Error(Errno.EBADF, `${operation}: unknown fid ${fid}`);
    found.clunk();
    this.#fids.delete(fid);
  }

  /** Clunk every fid (Tversion, or the connection ended). */
  clear(): void {
    for (const fid of this.#fids.values()) fid.clunk();
    this.#fids.clear();
  }
}
