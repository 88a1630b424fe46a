/**
 * Byte transports for 9P: dialing TCP and Unix sockets, writing fully, and
 * cutting a byte stream into frames whose size is checked against msize
 * before any buffer is grown for them.
 *
 * @module
 */

import { ConnectionError, TimeoutError } from "../errors.ts";
import { BufferedReader, type ByteStream } from "../io.ts";
import { frameSize, HEADER_BYTES } from "./wire.ts";

export { type ByteStream, writeAll } from "../io.ts";

/** Where a server listens. */
export type Address =
  | { kind: "tcp"; host: string; port: number }
  | { kind: "unix"; path: string };

/** The default 9P port (IANA "9pfs"). */
export const DEFAULT_PORT = 564;

/** `127.0.0.1:564`, `[::1]:564` or `unix:/run/9p.sock`: how errors and logs name a server. */
export function formatAddress(address: Address): string {
  if (address.kind === "unix") return `unix:${address.path}`;
  return address.host.includes(":")
    ? `[${address.host}]:${address.port}`
    : `${address.host}:${address.port}`;
}

/** Connect to `address`, giving up after `timeoutMs`. */
export async function dial(address: Address, timeoutMs: number): Promise<ByteStream> {
  const attempt = address.kind === "tcp"
    ? Deno.connect({ hostname: address.host, port: address.port, transport: "tcp" })
    : Deno.connect({ path: address.path, transport: "unix" });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new TimeoutError(`connect: no answer in ${timeoutMs / 1000} s`)),
      timeoutMs,
    );
  });
  try {
    const conn = await Promise.race([attempt, deadline]);
    // Small requests (Tread headers) must leave at once, not wait for Nagle.
    if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
    return conn;
  } catch (cause) {
    // A connection that arrives after the deadline must not leak.
    attempt.then((conn) => conn.close(), () => {});
    if (cause instanceof ConnectionError) throw cause;
    throw new ConnectionError(`connect: ${connectReason(cause)}`, { cause });
  } finally {
    clearTimeout(timer);
  }
}

function connectReason(cause: unknown): string {
  if (cause instanceof Deno.errors.ConnectionRefused) return "connection refused";
  if (cause instanceof Deno.errors.NotFound) return "no such socket or host";
  if (cause instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (cause instanceof Error) return cause.message;
  return String(cause);
}

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
