/**
 * The duplex byte stream both protocols run over (`Deno.Conn` is one, and so
 * are the tests' in-memory pairs), and writing all of a buffer to it.
 *
 * @module
 */

import { ConnectionError } from "./errors.ts";

/** A duplex byte stream. */
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
