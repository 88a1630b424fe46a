/**
 * Connected byte streams for tests: an in-memory pair (optionally with short
 * writes, to prove that writers loop) and a real Unix-socket pair.
 *
 * @module
 */

import type { ByteStream } from "../../../lib/nbd/engine.ts";

/** Options of {@link memoryDuplexPair}. */
export interface MemoryDuplexOptions {
  /** Accept at most this many bytes per write call (a short write), default unlimited. */
  maxWriteBytes?: number;
}

class Pipe {
  chunks: Uint8Array[] = [];
  ended = false;
  #waiter?: () => void;

  push(bytes: Uint8Array): void {
    this.chunks.push(bytes);
    this.wake();
  }

  end(): void {
    this.ended = true;
    this.wake();
  }

  wake(): void {
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.();
  }

  changed(): Promise<void> {
    return new Promise((resolve) => this.#waiter = resolve);
  }
}

class MemoryStream implements ByteStream {
  closed = false;
  constructor(
    readonly incoming: Pipe,
    readonly outgoing: Pipe,
    readonly maxWriteBytes: number,
  ) {}

  async read(p: Uint8Array): Promise<number | null> {
    for (;;) {
      // Like a closed Deno.Conn: a read pending on (or after) close fails.
      if (this.closed) throw new Deno.errors.BadResource("stream closed");
      const chunk = this.incoming.chunks[0];
      if (chunk) {
        const n = Math.min(p.length, chunk.length);
        p.set(chunk.subarray(0, n));
        if (n === chunk.length) this.incoming.chunks.shift();
        else this.incoming.chunks[0] = chunk.subarray(n);
        return n;
      }
      if (this.incoming.ended) return null;
      await this.incoming.changed();
    }
  }

  write(p: Uint8Array): Promise<number> {
    if (this.closed) return Promise.reject(new Deno.errors.BadResource("stream closed"));
    if (this.outgoing.ended) return Promise.reject(new Deno.errors.BrokenPipe("peer closed"));
    const n = Math.min(p.length, this.maxWriteBytes);
    this.outgoing.push(p.slice(0, n)); // copy: the writer may reuse its buffer
    return Promise.resolve(n);
  }

  close(): void {
    if (this.closed) throw new Deno.errors.BadResource("already closed");
    this.closed = true;
    this.outgoing.end();
    this.incoming.end();
    this.incoming.wake();
  }
}

/** Two in-memory streams, each reading what the other writes. */
export function memoryDuplexPair(options: MemoryDuplexOptions = {}): [ByteStream, ByteStream] {
  const max = options.maxWriteBytes ?? Number.POSITIVE_INFINITY;
  const aToB = new Pipe();
  const bToA = new Pipe();
  return [new MemoryStream(bToA, aToB, max), new MemoryStream(aToB, bToA, max)];
}

/** A connected pair of real Unix stream sockets: [server side, client side]. */
export async function unixSocketPair(): Promise<[Deno.UnixConn, Deno.UnixConn]> {
  const dir = await Deno.makeTempDir({ prefix: "9nbd-test-" });
  const path = `${dir}/sock`;
  const listener = Deno.listen({ transport: "unix", path });
  try {
    const [server, client] = await Promise.all([
      listener.accept(),
      Deno.connect({ transport: "unix", path }),
    ]);
    return [server, client];
  } finally {
    listener.close();
    await Deno.remove(dir, { recursive: true });
  }
}
