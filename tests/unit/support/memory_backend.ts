/**
 * An in-memory {@link BlockBackend} for tests, with a hook before every
 * operation (to delay it, hold it at a gate or make it fail) and a record of
 * what happened in which order and how many operations overlapped.
 *
 * @module
 */

import type { BlockBackend } from "../../../lib/backend.ts";

/** One backend operation, as the hook and the log see it. */
export interface BackendOp {
  kind: "read" | "write" | "flush";
  offset: number;
  length: number;
}

/** Options of {@link MemoryBackend}. */
export interface MemoryBackendOptions {
  readOnly?: boolean;
  /** Runs before the operation touches memory; may wait, or throw to fail it. */
  before?: (op: BackendOp) => Promise<void> | void;
}

/** An image held in a Uint8Array. */
export class MemoryBackend implements BlockBackend {
  readonly data: Uint8Array;
  readonly readOnly: boolean;
  /** "start read 0+512", "end write 4096+4096", "start flush", ... in order. */
  readonly log: string[] = [];
  /** Operations currently running. */
  inflight = 0;
  /** Most operations ever running at once. */
  maxInflight = 0;
  readonly #before?: (op: BackendOp) => Promise<void> | void;

  constructor(sizeOrData: number | Uint8Array, options: MemoryBackendOptions = {}) {
    this.data = typeof sizeOrData === "number" ? new Uint8Array(sizeOrData) : sizeOrData;
    this.readOnly = options.readOnly ?? false;
    this.#before = options.before;
  }

  get sizeBytes(): number {
    return this.data.length;
  }

  read(offset: number, dest: Uint8Array): Promise<void> {
    return this.#run({ kind: "read", offset, length: dest.length }, () => {
      this.#check(offset, dest.length);
      dest.set(this.data.subarray(offset, offset + dest.length));
    });
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#run({ kind: "write", offset, length: data.length }, () => {
      if (this.readOnly) throw new Error("write on a read-only MemoryBackend");
      this.#check(offset, data.length);
      this.data.set(data, offset);
    });
  }

  flush(): Promise<void> {
    return this.#run({ kind: "flush", offset: 0, length: 0 }, () => {});
  }

  /** Log lines of one kind of event, for example `entries("start flush")`. */
  entries(prefix: string): string[] {
    return this.log.filter((line) => line.startsWith(prefix));
  }

  #check(offset: number, length: number): void {
    // The engine promises never to ask for bytes past the end; catch it if it does.
    if (offset < 0 || offset + length > this.data.length) {
      throw new RangeError(`MemoryBackend: ${offset}+${length} is past ${this.data.length}`);
    }
  }

  async #run(op: BackendOp, body: () => void): Promise<void> {
    const name = op.kind === "flush" ? "flush" : `${op.kind} ${op.offset}+${op.length}`;
    this.inflight++;
    this.maxInflight = Math.max(this.maxInflight, this.inflight);
    this.log.push(`start ${name}`);
    try {
      await this.#before?.(op);
      body();
      this.log.push(`end ${name}`);
    } catch (err) {
      this.log.push(`fail ${name}`);
      throw err;
    } finally {
      this.inflight--;
    }
  }
}

/** Resolves after `ms` milliseconds. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A promise to open by hand: operations wait at it until a test calls `open()`. */
export class Gate {
  readonly opened: Promise<void>;
  open!: () => void;
  constructor() {
    this.opened = new Promise((resolve) => this.open = resolve);
  }
}
