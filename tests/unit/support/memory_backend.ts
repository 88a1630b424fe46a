/**
 * An in-memory {@link BlockBackend} for tests, with a hook before every
 * operation (to park it, hold it at a gate or make it fail) and a record of
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

/** A promise to open by hand: operations wait at it until a test calls `open()`. */
export class Gate {
  readonly opened: Promise<void>;
  open!: () => void;
  constructor() {
    this.opened = new Promise((resolve) => this.open = resolve);
  }
}

/**
 * Backend calls parked one by one until the test releases them, so a test
 * decides exactly which calls are running and in which order they finish.
 * Use {@link Parking.hook} as a {@link MemoryBackendOptions.before} hook.
 */
export class Parking {
  /** Calls waiting to be released, in the order they arrived. */
  readonly waiting: { op: BackendOp; release: () => void }[] = [];
  /** Calls that reached the hook, parked or let through. */
  started = 0;
  readonly #parks: (op: BackendOp) => boolean;
  #open = false;

  /** Park the calls `parks` picks (default: all); the others go through at once. */
  constructor(parks: (op: BackendOp) => boolean = () => true) {
    this.#parks = parks;
  }

  /** The `before` hook: parks the call until released. */
  readonly hook = (op: BackendOp): Promise<void> | undefined => {
    this.started++;
    if (this.#open || !this.#parks(op)) return undefined;
    return new Promise((release) => this.waiting.push({ op, release }));
  };

  /** Let the waiting call at `index` (default: the oldest) go on. */
  release(index = 0): void {
    const [call] = this.waiting.splice(index, 1);
    if (!call) throw new Error(`no parked call at ${index} (${this.waiting.length} waiting)`);
    call.release();
  }

  /** Let every waiting call go on, and park no later one. */
  releaseAll(): void {
    this.#open = true;
    for (const call of this.waiting.splice(0)) call.release();
  }
}
