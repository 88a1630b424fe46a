/**
 * Socket plumbing shared by both protocols: the duplex byte stream they run
 * over, writing all of a buffer, one batched writer and one buffered reader.
 *
 * Both are built for the data path: at a deep queue of small requests, the
 * cost per request is system calls, so replies that complete together leave
 * in one write ({@link BatchWriter}) and requests that arrive together are
 * taken from one read ({@link BufferedReader}). Neither allocates or awaits
 * per item beyond what the caller asks for.
 *
 * @module
 */

import { ConnectionError, describeError } from "./errors.ts";

/** A duplex byte stream (`Deno.Conn` is one, and so are the tests' in-memory pairs). */
export interface ByteStream {
  /** Read into `p`; resolves with the count read, or null at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
  /** Write some prefix of `p`; resolves with the count written (may be short). */
  write(p: Uint8Array): Promise<number>;
  close(): void;
}

/** Write all of `bytes` (a stream's `write` may take only part). */
export async function writeAll(
  stream: { write(p: Uint8Array): Promise<number> },
  bytes: Uint8Array,
): Promise<void> {
  for (let done = 0; done < bytes.length;) {
    const n = await stream.write(bytes.subarray(done));
    if (n <= 0) throw new ConnectionError("socket write made no progress");
    done += n;
  }
}

/**
 * Largest batch of small writes coalesced into one socket write. Larger
 * items are written on their own, from their own buffer.
 */
export const BATCH_BYTES = 256 * 1024;

/** What a {@link BatchWriter} tells its owner. */
export interface BatchWriterOptions<T> {
  /**
   * Called exactly once per item, when its bytes have been written or
   * dropped (the writer failed or was closed); written items in the order
   * queued. From then on the stream no longer reads the item's buffer, so
   * the owner may reuse it.
   */
  onDone?: (token: T) => void;
  /**
   * Called once, with what the first failed write threw; every item queued
   * then or later is dropped. A failure after {@link BatchWriter.close} is
   * not reported: the owner closed the stream itself. Neither callback may
   * throw.
   */
  onError: (err: unknown) => void;
}

/** Settled queue slots get this, so they stop holding the caller's buffers. */
const NO_BYTES = new Uint8Array(0);
/** Settled slots reclaimed while items remain queued once there are this many (and half). */
const COMPACT_SLOTS = 1024;

/**
 * Writes items to a stream in order, one write at a time, coalescing the
 * items queued while a write was in progress into one write of up to
 * {@link BATCH_BYTES} through one reused batch buffer.
 *
 * The first write starts one microtask after the first item is queued, not
 * at once: a burst of items queued in the same turn (32 replies completed by
 * one socket read, say) then leaves as one write instead of one write for
 * the first item and a second for the rest.
 *
 * `T` is what the owner attaches to each item to recognise it in
 * {@link BatchWriterOptions.onDone} (a request's buffer, say); `void` when
 * it needs none.
 */
export class BatchWriter<T = void> {
  readonly #stream: ByteStream;
  readonly #onDone?: (token: T) => void;
  readonly #onError: (err: unknown) => void;
  /** Unsettled items are `[#head, length)`: parallel arrays, so queueing allocates nothing. */
  readonly #items: Uint8Array[] = [];
  readonly #tokens: T[] = [];
  #head = 0;
  #pendingBytes = 0;
  #batchBuffer?: Uint8Array;
  /** A drain is scheduled or running. */
  #running = false;
  /** A write is in progress: items from #head on are being written. */
  #writing = false;
  /** Nesting depth of #settleTo (an onDone may queue or close): slots must not move meanwhile. */
  #settling = 0;
  /** Failed or closed: items are dropped, not written. */
  #stopped = false;

  constructor(stream: ByteStream, options: BatchWriterOptions<T>) {
    this.#stream = stream;
    this.#onDone = options.onDone;
    this.#onError = options.onError;
  }

  /** Bytes queued or being written, not yet taken by the stream: what a stalled peer costs. */
  get pendingBytes(): number {
    return this.#pendingBytes;
  }

  /**
   * Queue `bytes` behind everything queued before. The caller must not
   * change them until `onDone` says the item is done. After a failure or
   * {@link close} the item is dropped at once (`onDone` runs before this returns).
   */
  write(bytes: Uint8Array, token: T): void {
    if (this.#stopped) {
      this.#onDone?.(token);
      return;
    }
    this.#items.push(bytes);
    this.#tokens.push(token);
    this.#pendingBytes += bytes.length;
    if (!this.#running) {
      this.#running = true;
      queueMicrotask(() => this.#drain());
    }
  }

  /**
   * Write nothing more: drop the items not yet handed to the stream, and
   * every later one. A write in progress settles on its own (closing the
   * stream ends it), and its items with it.
   */
  close(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    if (!this.#writing) this.#settleTo(Infinity);
  }

  async #drain(): Promise<void> {
    try {
      while (this.#head < this.#items.length && !this.#stopped) {
        const first = this.#head;
        let end = first + 1;
        let total = this.#items[first].length;
        while (end < this.#items.length && total + this.#items[end].length <= BATCH_BYTES) {
          total += this.#items[end].length;
          end++;
        }
        let bytes = this.#items[first];
        if (end - first > 1) {
          // One buffer serves every batch: it is free again once the write resolves.
          this.#batchBuffer ??= new Uint8Array(BATCH_BYTES);
          bytes = this.#batchBuffer.subarray(0, total);
          for (let i = first, at = 0; i < end; i++) {
            bytes.set(this.#items[i], at);
            at += this.#items[i].length;
          }
        }
        this.#writing = true;
        try {
          await writeAll(this.#stream, bytes);
        } catch (err) {
          if (!this.#stopped) {
            this.#stopped = true;
            this.#onError(err);
          }
        } finally {
          this.#writing = false;
        }
        this.#settleTo(end);
      }
      // Failed or closed while writing: what is still queued is dropped now.
      if (this.#stopped) this.#settleTo(Infinity);
    } finally {
      this.#running = false;
    }
  }

  /** Settle the items before index `to` (Infinity: all): tell the owner, in order; forget them. */
  #settleTo(to: number): void {
    this.#settling++;
    try {
      // #head moves before each call: an onDone that closes the writer must not settle it twice.
      while (this.#head < Math.min(to, this.#items.length)) {
        const i = this.#head++;
        const token = this.#tokens[i];
        this.#pendingBytes -= this.#items[i].length;
        this.#items[i] = NO_BYTES;
        this.#tokens[i] = undefined as T;
        this.#onDone?.(token);
      }
    } finally {
      this.#settling--;
    }
    if (this.#settling === 0 && !this.#writing) this.#compact();
  }

  /**
   * Reclaim settled slots: all of them when the queue is empty (the usual
   * case), else once they are the larger part, so a queue that never quite
   * empties does not grow without bound.
   */
  #compact(): void {
    const head = this.#head;
    const length = this.#items.length;
    if (head === length) {
      this.#items.length = 0;
      this.#tokens.length = 0;
      this.#head = 0;
    } else if (head >= COMPACT_SLOTS && head * 2 >= length) {
      this.#items.copyWithin(0, head);
      this.#tokens.copyWithin(0, head);
      this.#items.length = length - head;
      this.#tokens.length = length - head;
      this.#head = 0;
    }
  }
}

/**
 * Reads from a stream through one buffer, so that a 28-byte NBD header or a
 * burst of 9P frames does not cost a read call each.
 *
 * - {@link readFull} fills a destination, reading a payload at least as
 *   large as the buffer straight into it (no copy);
 * - {@link takeBuffered} fills one from what is already buffered, without a
 *   turn of the event loop, or takes nothing;
 * - {@link fill}, {@link peek} and {@link consume} serve a framing layer:
 *   make `count` bytes available, then look at them in place. The buffer
 *   grows only in {@link fill}, to a size its caller has checked.
 *
 * A failing stream read rejects with a {@link ConnectionError} whose cause
 * is what the stream threw. With a capacity of 0 nothing is read ahead:
 * every read goes straight into its destination, so a stream handed on
 * afterwards is positioned just past the last byte asked for.
 */
export class BufferedReader {
  readonly stream: ByteStream;
  #buffer: Uint8Array;
  #start = 0;
  #end = 0;

  constructor(stream: ByteStream, capacityBytes: number) {
    this.stream = stream;
    this.#buffer = new Uint8Array(capacityBytes);
  }

  /** Bytes read from the stream and not yet taken. */
  get bufferedBytes(): number {
    return this.#end - this.#start;
  }

  /** Fill `dest`; resolves with the bytes filled, fewer than `dest.length` only at stream end. */
  async readFull(dest: Uint8Array): Promise<number> {
    let filled = this.#copyOut(dest, 0);
    // Once #copyOut leaves `dest` short, the buffer is empty.
    while (filled < dest.length) {
      const direct = dest.length - filled >= this.#buffer.length;
      let n: number | null;
      try {
        n = await this.stream.read(direct ? dest.subarray(filled) : this.#buffer);
      } catch (cause) {
        throw readFailure(cause);
      }
      if (!n) return filled;
      if (direct) {
        filled += n;
      } else {
        this.#start = 0;
        this.#end = n;
        filled = this.#copyOut(dest, filled);
      }
    }
    return filled;
  }

  /** Fill all of `dest` from the buffer if it holds enough (no read, no turn); else take none. */
  takeBuffered(dest: Uint8Array): boolean {
    if (this.#end - this.#start < dest.length) return false;
    this.#copyOut(dest, 0);
    return true;
  }

  /** Skip `length` bytes; false if the stream ended first. */
  async discard(length: number): Promise<boolean> {
    let left = length;
    while (left > 0) {
      const buffered = this.#end - this.#start;
      if (buffered > 0) {
        const n = Math.min(buffered, left);
        this.#start += n;
        left -= n;
        continue;
      }
      // Unbuffered: read the skipped bytes through a scratch buffer rather than read ahead.
      const sink = this.#buffer.length > 0
        ? this.#buffer
        : new Uint8Array(Math.min(left, DISCARD_CHUNK_BYTES));
      let n: number | null;
      try {
        n = await this.stream.read(sink);
      } catch (cause) {
        throw readFailure(cause);
      }
      if (!n) return false;
      if (sink === this.#buffer) {
        this.#start = 0;
        this.#end = n;
      } else {
        left -= n;
      }
    }
    return true;
  }

  /**
   * Make at least `count` bytes available to {@link peek} and
   * {@link consume}, reading as needed; false if the stream ended first
   * (what did arrive stays buffered). The buffer grows to hold `count`:
   * the caller must have checked it against its limit.
   */
  async fill(count: number): Promise<boolean> {
    if (this.#end - this.#start >= count) return true;
    if (this.#buffer.length - this.#start < count) {
      if (this.#buffer.length >= count) {
        this.#buffer.copyWithin(0, this.#start, this.#end);
      } else {
        const grown = new Uint8Array(count * 2);
        grown.set(this.#buffer.subarray(this.#start, this.#end));
        this.#buffer = grown;
      }
      this.#end -= this.#start;
      this.#start = 0;
    }
    while (this.#end - this.#start < count) {
      let n: number | null;
      try {
        n = await this.stream.read(this.#buffer.subarray(this.#end));
      } catch (cause) {
        throw readFailure(cause);
      }
      if (!n) return false;
      this.#end += n;
    }
    return true;
  }

  /** The next `count` buffered bytes, in place (valid until the next read); not taken. */
  peek(count: number): Uint8Array {
    if (count > this.#end - this.#start) {
      throw new RangeError(`peek of ${count} bytes with ${this.#end - this.#start} buffered`);
    }
    return this.#buffer.subarray(this.#start, this.#start + count);
  }

  /** Take the next `count` buffered bytes, in place (valid until the next read). */
  consume(count: number): Uint8Array {
    const bytes = this.peek(count);
    this.#start += count;
    return bytes;
  }

  /** Copy buffered bytes into `dest` from `filled` on; returns the new fill count. */
  #copyOut(dest: Uint8Array, filled: number): number {
    const n = Math.min(this.#end - this.#start, dest.length - filled);
    if (n <= 0) return filled;
    dest.set(this.#buffer.subarray(this.#start, this.#start + n), filled);
    this.#start += n;
    return filled + n;
  }
}

/** Scratch size when an unbuffered reader discards. */
const DISCARD_CHUNK_BYTES = 64 * 1024;

function readFailure(cause: unknown): ConnectionError {
  return new ConnectionError(`connection lost: ${describeError(cause)}`, { cause });
}
