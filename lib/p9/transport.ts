/**
 * Byte transports for 9P: writing fully, and cutting a byte stream into
 * frames whose size is checked against msize before any buffer is grown for
 * them. Dialing a server is `dial` in `lib/address.ts`.
 *
 * @module
 */

import { ConnectionError } from "../errors.ts";
import { BufferedReader, type ByteStream } from "../io.ts";
import { frameSize, HEADER_BYTES } from "./wire.ts";

export { type ByteStream, writeAll } from "../io.ts";

/**
 * Cuts a byte stream into 9P frames, on a {@link BufferedReader}: reads in
 * large gulps into one reused buffer; a returned frame is a view into that
 * buffer and is valid only until the next call to {@link FrameReader.next},
 * so the caller must finish with it (decode, copy payload) first. That keeps
 * the receive path at one copy. A frame's size is checked against
 * {@link FrameReader.maxFrameBytes} before the buffer grows to hold it.
 */
export class FrameReader {
  readonly #reader: BufferedReader;
  /** Largest frame accepted; raised to the negotiated msize after Tversion. */
  maxFrameBytes: number;

  constructor(readonly stream: ByteStream, maxFrameBytes: number, bufferBytes = 1024 * 1024) {
    this.maxFrameBytes = maxFrameBytes;
    this.#reader = new BufferedReader(stream, Math.max(bufferBytes, HEADER_BYTES));
  }

  /**
   * The next frame if it is already buffered, else undefined (nothing is
   * read). Lets a reader dispatch every frame of one socket read in a single
   * turn, so the replies' continuations run together.
   */
  buffered(): Uint8Array | undefined {
    const reader = this.#reader;
    if (reader.bufferedBytes < 4) return undefined;
    const size = frameSize(reader.peek(4), this.maxFrameBytes);
    if (reader.bufferedBytes < size) return undefined;
    return reader.consume(size);
  }

  /** The next complete frame, or null at a clean end of stream between frames. */
  async next(): Promise<Uint8Array | null> {
    const reader = this.#reader;
    if (!(await reader.fill(4))) {
      if (reader.bufferedBytes === 0) return null;
      throw new ConnectionError("connection closed in the middle of a 9P frame");
    }
    // Checked before fill() grows the buffer for it: a hostile size never allocates.
    const size = frameSize(reader.peek(4), this.maxFrameBytes);
    if (!(await reader.fill(size))) {
      throw new ConnectionError("connection closed in the middle of a 9P frame");
    }
    return reader.consume(size);
  }
}
