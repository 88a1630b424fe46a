/**
 * Decides which writes a new session must replay: every write acknowledged
 * since the last FLUSH that succeeded. A server that crashes may lose
 * writes it had not synced; replaying them on the next session, before it
 * serves anything, makes a FLUSH acknowledged to the kernel cover them
 * there. The log also bounds its own memory: past {@link WRITE_LOG_MAX_BYTES}
 * of logged data, a write starts a background FLUSH (one at a time).
 *
 * @module
 */

import type { BlockBackend } from "../backend.ts";

/** Above this many unflushed bytes, writes trigger a background fsync to bound memory. */
export const WRITE_LOG_MAX_BYTES = 64 * 1024 * 1024;

interface LoggedWrite {
  offset: number;
  data: Uint8Array;
}

/** The writes acknowledged since the last successful FLUSH, in the order they were made. */
export class WriteLog {
  #writes: LoggedWrite[] = [];
  #bytes = 0;
  /** Writes forgotten so far: the position of `#writes[0]` among all writes ever logged. */
  #forgotten = 0;
  #backgroundFlush: Promise<void> | undefined;

  /** How many writes a new session would replay. */
  get length(): number {
    return this.#writes.length;
  }

  /**
   * Keep a copy of a write the server acknowledged (the caller reuses its
   * buffer). Past the memory bound, start `flush` in the background unless
   * one is already running; its failure is left to the next FLUSH.
   */
  record(offset: number, data: Uint8Array, flush: () => Promise<void>): void {
    this.#writes.push({ offset, data: data.slice() });
    this.#bytes += data.length;
    if (this.#bytes > WRITE_LOG_MAX_BYTES && !this.#backgroundFlush) {
      this.#backgroundFlush = flush().catch(() => {}).finally(() => {
        this.#backgroundFlush = undefined;
      });
    }
  }

  /**
   * Run `fsync` and, once it succeeds, forget the writes it covers: those
   * logged before it started. (Replays happen before a session is handed
   * out, so a successful fsync on any session covers them.) Positions are
   * counted from the first write ever logged, so flushes that overlap (a
   * background one and the kernel's) each forget only what they cover.
   */
  async flush(fsync: () => Promise<void>): Promise<void> {
    const coveredUpTo = this.#forgotten + this.#writes.length;
    await fsync();
    const covered = coveredUpTo - this.#forgotten;
    if (covered <= 0) return; // A later flush already forgot them.
    this.#bytes -= this.#writes.slice(0, covered).reduce((n, w) => n + w.data.length, 0);
    this.#writes = this.#writes.slice(covered);
    this.#forgotten += covered;
  }

  /** Write every logged write to `session`, in order, before it serves anything. */
  async replayOn(session: BlockBackend): Promise<void> {
    for (const write of this.#writes) await session.write(write.offset, write.data);
  }
}
