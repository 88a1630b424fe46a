/**
 * Byte transports for 9P: writing fully, and cutting a byte stream into
 * frames whose size is checked against msize before any buffer is grown for
 * them. Dialing a server is `dial` in `lib/address.ts`.
 *
 * @module
 */

import { ConnectionError } from "../errors.ts";
import type { ByteStream } from "../stream.ts";
import { frameSize, HEADER_BYTES } from "./wire.ts";

export { type ByteStream, writeAll } from "../stream.ts";

/**
 * Cuts a byte stream into 9P frames. Reads in large gulps into one reused
 * buffer; a returned frame is a view into that buffer and is valid only until
 * the next call to {@link FrameReader.next}, so the caller must finish with
 * it (decode, copy payload) first. That keeps the receive path at one copy.
 */
export class FrameReader {
  #buffer: Uint8Array;
  #start = 0;
  #end = 0;
  /** Largest frame accepted; raised to the negotiated msize after Tversion. */
  maxFrameBytes: number;

  constructor(readonly stream: ByteStream, maxFrameBytes: number, bufferBytes = 1024 * 1024) {
    this.maxFrameBytes = maxFrameBytes;
    this.#buffer = new Uint8Array(Math.max(bufferBytes, HEADER_BYTES));
  }

  /**
   * The next frame if it is already buffered, else undefined (nothing is
   * read). Lets a reader dispatch every frame of one socket read in a single
   * turn, so the replies' continuations run together.
   */
  buffered(): Uint8Array | undefined {
    const available = this.#end - this.#start;
    if (available < 4) return undefined;
    const size = frameSize(this.#buffer.subarray(this.#start, this.#start + 4), this.maxFrameBytes);
    if (available < size) return undefined;
    const frame = this.#buffer.subarray(this.#start, this.#start + size);
    this.#start += size;
    return frame;
  }

  /** The next complete frame, or null at a clean end of stream between frames. */
  async next(): Promise<Uint8Array | null> {
    if (!(await this.#fill(4))) return null;
    const size = frameSize(this.#buffer.subarray(this.#start, this.#start + 4), this.maxFrameBytes);
    if (!(await this.#fill(size))) {
      throw new ConnectionError("connection closed in the middle of a 9P frame");
    }
    const frame = this.#buffer.subarray(this.#start, this.#start + size);
    this.#start += size;
    return frame;
  }

  /** Make `count` bytes available at #start; false if the stream ended first. */
  async #fill(count: number): Promise<boolean> {
    if (this.#end - this.#start >= count) return true;
    if (this.#buffer.length - this.#start < count) {
      // Compact, growing only to a size already checked against msize.
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
        throw new ConnectionError(`connection lost: ${(cause as Error).message}`, { cause });
      }
      if (n === null || n === 0) {
        if (this.#end === this.#start) return false;
        throw new ConnectionError("connection closed in the middle of a 9P frame");
      }
      this.#end += n;
    }
    return true;
  }
}
