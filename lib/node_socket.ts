/**
 * A {@link ByteStream} over a `node:net` socket, for what `Deno.connect`
 * cannot do (bind a local port before connecting, for one). The session and
 * the server run over it exactly as over a `Deno.Conn`.
 *
 * The receive side keeps the data path lean, through node's `onread`: the
 * socket reads into one reused 1 MiB buffer (not a new Buffer per chunk;
 * a smaller one costs more calls per byte), and each chunk is copied once,
 * into the waiting read's buffer or, with no read waiting, into the queue.
 * Past {@link QUEUE_HIGH_BYTES} queued the socket stops reading until the
 * queue drains, so a slow reader is backpressure, not memory. A write
 * resolves once the socket no longer needs the caller's bytes (its
 * callback).
 *
 * (Reading straight into the waiting read's buffer, with `onread.buffer` as
 * a function, does not happen in Deno 2.9: it asks for the next buffer as
 * soon as a chunk was handed over, before the reader has asked again.)
 *
 * @module
 */

import type { Socket, SocketConstructorOpts } from "node:net";
import type { ByteStream } from "./io.ts";

/** Bytes a socket reads at once (into one reused buffer). */
const RECEIVE_BUFFER_BYTES = 1024 * 1024;
/** Queued bytes at which the socket stops reading. */
const QUEUE_HIGH_BYTES = 1024 * 1024;

/** node's `onread` option: read into `buffer`, hand each chunk to `callback`. */
export type OnRead = NonNullable<SocketConstructorOpts["onread"]>;

/** A {@link ByteStream} over a node:net socket. */
export class NodeSocketStream implements ByteStream {
  readonly socket: Socket;
  readonly #queue: Uint8Array[] = [];
  #queuedBytes = 0;
  #paused = false;
  #ended = false;
  #error: Error | undefined;
  #waiter:
    | { dest: Uint8Array; resolve(n: number | null): void; reject(err: Error): void }
    | undefined;

  /**
   * Make the socket with `open`, which must pass `onread` to node
   * (`net.connect({ ..., onread })` or `new net.Socket({ fd, onread })`):
   * that is how its bytes reach this stream.
   */
  constructor(open: (onread: OnRead) => Socket) {
    this.socket = open({
      buffer: new Uint8Array(RECEIVE_BUFFER_BYTES),
      callback: (bytes: number, chunk: Uint8Array) => this.#received(chunk.subarray(0, bytes)),
    });
    this.socket.on("end", () => this.#finish());
    this.socket.on("close", () => this.#finish());
    this.socket.on("error", (err: Error) => this.#finish(err));
  }

  read(dest: Uint8Array): Promise<number | null> {
    if (this.#queuedBytes > 0) return Promise.resolve(this.#takeQueued(dest));
    if (this.#error) return Promise.reject(this.#error);
    if (this.#ended || dest.length === 0) return Promise.resolve(this.#ended ? null : 0);
    return new Promise((resolve, reject) => this.#waiter = { dest, resolve, reject });
  }

  write(bytes: Uint8Array): Promise<number> {
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => {
      this.socket.write(bytes, (err) => err ? reject(err) : resolve(bytes.length));
    });
  }

  close(): void {
    this.socket.destroy();
    this.#finish();
  }

  /** One chunk from the socket (a view of the reused buffer); false: stop reading. */
  #received(chunk: Uint8Array): boolean {
    let rest = chunk;
    const waiter = this.#waiter;
    if (waiter) {
      this.#waiter = undefined;
      const n = Math.min(rest.length, waiter.dest.length);
      waiter.dest.set(rest.subarray(0, n));
      rest = rest.subarray(n);
      waiter.resolve(n);
    }
    if (rest.length > 0) {
      this.#queue.push(rest.slice());
      this.#queuedBytes += rest.length;
    }
    if (!this.#paused && this.#queuedBytes >= QUEUE_HIGH_BYTES) {
      this.#paused = true;
      this.socket.pause();
    }
    return !this.#paused;
  }

  #takeQueued(dest: Uint8Array): number {
    let n = 0;
    while (n < dest.length && this.#queue.length > 0) {
      const head = this.#queue[0];
      const take = Math.min(head.length, dest.length - n);
      dest.set(head.subarray(0, take), n);
      n += take;
      if (take === head.length) this.#queue.shift();
      else this.#queue[0] = head.subarray(take);
    }
    this.#queuedBytes -= n;
    if (this.#paused && this.#queuedBytes <= QUEUE_HIGH_BYTES / 2) {
      this.#paused = false;
      this.socket.resume();
    }
    return n;
  }

  #finish(err?: Error): void {
    if (err && !this.#error && !this.#ended) this.#error = err;
    this.#ended = true;
    const waiter = this.#waiter;
    this.#waiter = undefined;
    if (!waiter) return;
    if (this.#error) waiter.reject(this.#error);
    else waiter.resolve(null);
  }
}
