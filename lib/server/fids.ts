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

/** The fid table of one connection, with a bound so a client cannot exhaust file descriptors. */
export class FidTable {
  readonly #fids = new Map<number, Fid>();

  constructor(readonly maxFids: number) {}

  get size(): number {
    return this.#fids.size;
  }

  get(fid: number, operation: string): Fid {
    const found = this.#fids.get(fid);
    if (!found) throw new P9Error(Errno.EBADF, `${operation}: unknown fid ${fid}`);
    return found;
  }

  has(fid: number): boolean {
    return this.#fids.has(fid);
  }

  /** Add a new fid; `replace` allows Twalk's newfid == fid. */
  add(fid: number, entry: Fid, operation: string, replace = false): void {
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
    this.get(fid, operation).clunk();
    this.#fids.delete(fid);
  }

  /** Clunk every fid (Tversion, or the connection ended). */
  clear(): void {
    for (const fid of this.#fids.values()) fid.clunk();
    this.#fids.clear();
  }
}
