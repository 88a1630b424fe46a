/**
 * Serves one NBD connection (transmission phase only, as the Linux driver
 * speaks it after NBD_SET_SOCK) from a {@link BlockBackend}.
 *
 * Requests are read one after another and served concurrently, up to a
 * bounded window ({@link NbdEngineOptions.maxInflight}); when the window is
 * full the engine stops reading, so the kernel's own queue (not our memory)
 * absorbs the back-pressure. Replies go out in completion order, matched by
 * cookie, through one {@link BatchWriter}, so two replies never interleave on
 * the socket and replies that complete together leave in one write.
 *
 * What ends a connection:
 * - DISC, or EOF from the peer: stop reading, let requests in flight finish
 *   and reply, close the stream, resolve {@link NbdEngine.serve};
 * - a protocol error (bad magic, absurd length): the stream is out of step
 *   and cannot be trusted, so drop it at once and reject with
 *   {@link ProtocolError};
 * - a socket read or write failure: reject with {@link ConnectionError};
 * - {@link NbdEngine.stop}: close the stream, drop pending replies, resolve.
 *
 * A backend failure is never fatal: it becomes an error reply through
 * {@link nbdErrorFor} and the engine keeps serving.
 *
 * @module
 */

import type { BlockBackend } from "../backend.ts";
import { ConnectionError, ProtocolError } from "../errors.ts";
import {
  CommandFlag,
  commandName,
  decodeRequest,
  encodeSimpleReply,
  NbdCommand,
  NbdError,
  nbdErrorFor,
  type NbdRequest,
  REQUEST_BYTES,
  SIMPLE_REPLY_BYTES,
  TransmissionFlag,
} from "./wire.ts";
import { BatchWriter, BufferedReader, type ByteStream } from "../io.ts";

export type { ByteStream };

/** Requests served at once when no option says otherwise. */
export const DEFAULT_MAX_INFLIGHT = 64;
/**
 * Data (READ and WRITE bytes) served at once when no option says otherwise.
 * A 9P session keeps at most 64 requests of at most msize in flight (4 MiB
 * at diod's 64 KiB), so more than this only holds memory: a proxy under fio
 * with 1 MiB reads at queue depth 64 peaked at 156 MiB RSS without a bound.
 */
export const DEFAULT_MAX_INFLIGHT_BYTES = 16 * 1024 * 1024;
/**
 * Largest READ or WRITE accepted (the kernel's `max_hw_sectors` ceiling).
 * Anything longer is a peer gone mad, not a request: the connection is dropped
 * before a buffer of that size is allocated.
 */
export const MAX_REQUEST_BYTES = 32 * 1024 * 1024;
/** The block layer's unit: the kernel sizes devices in 512-byte sectors. */
export const SECTOR_BYTES = 512;

/** Bytes of the shared zero buffer WRITE_ZEROES writes from, chunk by chunk. */
const ZERO_CHUNK_BYTES = 1024 * 1024;
/** Internal read buffer: headers and small payloads come out of it without a read call each. */
const READ_BUFFER_BYTES = 256 * 1024;

/** Options of {@link NbdEngine}. */
export interface NbdEngineOptions {
  /** Requests served concurrently at most (default {@link DEFAULT_MAX_INFLIGHT}). */
  maxInflight?: number;
  /** Longest READ or WRITE accepted (default {@link MAX_REQUEST_BYTES}). */
  maxRequestBytes?: number;
  /**
   * READ and WRITE bytes served at once at most (default
   * {@link DEFAULT_MAX_INFLIGHT_BYTES}); a single larger request is still served.
   */
  maxInflightBytes?: number;
  /**
   * Size of the device the peer was told about (default: the backend's
   * `sizeBytes`). Requests past it get EINVAL. It may exceed the image when
   * sizes disagree; bytes between the image end and this size read as zeros
   * (see {@link NbdEngine}).
   */
  exportSizeBytes?: number;
  /** Told about every backend failure that became an error reply (for logging). */
  onRequestError?: (err: unknown, request: NbdRequest) => void;
}

/** Options of {@link transmissionFlags}. */
export interface TransmissionFlagOptions {
  /**
   * Advertise CAN_MULTI_CONN: only true when every connection to this image
   * sees every other's acknowledged writes (one backend behind all of them).
   */
  canMultiConn?: boolean;
}

/**
 * The transmission flags to advertise (NBD_SET_FLAGS) for `backend`.
 * TRIM is never advertised: a 9P image has no hole-punching to map it to.
 */
export function transmissionFlags(
  backend: Pick<BlockBackend, "readOnly">,
  options: TransmissionFlagOptions = {},
): number {
  let flags: number = TransmissionFlag.hasFlags;
  if (backend.readOnly) {
    flags |= TransmissionFlag.readOnly;
  } else {
    flags |= TransmissionFlag.sendFlush | TransmissionFlag.sendFua |
      TransmissionFlag.sendWriteZeroes;
  }
  if (options.canMultiConn) flags |= TransmissionFlag.canMultiConn;
  return flags;
}

/**
 * The device size to give the kernel (NBD_SET_SIZE) for an image of
 * `imageSizeBytes`: rounded DOWN to a multiple of `blockSizeBytes`.
 *
 * Why down: NBD_SET_SIZE takes bytes, but the block layer addresses the device
 * in 512-byte sectors and whole logical blocks, so a partial last block cannot
 * be exposed. Rounding up would let the kernel ask for bytes the image does
 * not have; rounding down keeps every request inside the image, at the price
 * of hiding the (under one block) tail. With the default block size of 512
 * that tail is at most 511 bytes. Returns 0 for an image smaller than a block.
 */
export function deviceSizeBytes(imageSizeBytes: number, blockSizeBytes = SECTOR_BYTES): number {
  if (
    !Number.isInteger(blockSizeBytes) || blockSizeBytes < SECTOR_BYTES ||
    (blockSizeBytes & (blockSizeBytes - 1)) !== 0
  ) {
    throw new RangeError(`block size ${blockSizeBytes} is not a power of two ≥ 512`);
  }
  if (!Number.isSafeInteger(imageSizeBytes) || imageSizeBytes < 0) {
    throw new RangeError(`image size ${imageSizeBytes} is not a byte count`);
  }
  return imageSizeBytes - imageSizeBytes % blockSizeBytes;
}

/**
 * Where an {@link NbdEngine} is in its life. The stream is open in `ready`,
 * `serving` and `draining`, and closed in every other state; the engine
 * closes it exactly once, on leaving those three.
 *
 * - `ready`: constructed, {@link NbdEngine.serve} not yet called.
 * - `serving`: reading requests, serving them, writing replies.
 * - `draining`: the peer sent DISC or reached EOF, so nothing more is read;
 *   requests in flight finish and reply. A reply write failing now is the
 *   peer leaving, not a broken connection.
 * - `stopping`: replies are dropped; serve() resolves once the backend calls
 *   in flight settle.
 * - `failing`: the peer broke the protocol or the socket failed; replies are
 *   dropped and serve() rejects with that failure once the backend calls in
 *   flight settle.
 * - `cancelled`: stopped before serve() was called; serve() resolves at once.
 * - `closed`: serve() has settled (the end state).
 *
 * Transitions:
 *
 *     ready     --serve()-----------------------------> serving
 *     ready     --stop()------------------------------> cancelled
 *     cancelled --serve()-----------------------------> closed     (resolves)
 *     serving   --DISC or EOF-------------------------> draining
 *     serving   --bad request, read or write failure--> failing
 *     draining  --reply write fails-------------------> stopping
 *     serving, draining, failing --stop()-------------> stopping   (serve() resolves)
 *     draining, stopping, failing --nothing in flight-> closed
 */
type EngineState =
  | "ready"
  | "serving"
  | "draining"
  | "stopping"
  | "failing"
  | "cancelled"
  | "closed";

/** What a written (or dropped) reply gives back: a window slot, its bytes, maybe its buffer. */
interface SentReply {
  /** The request buffer to recycle, unless a backend may still write into it. */
  buffer: Uint8Array | undefined;
  /** READ or WRITE bytes the request counted against the data bound. */
  dataBytes: number;
}

/**
 * Serves one NBD connection from a backend. Create it, call
 * {@link NbdEngine.serve} once; call {@link NbdEngine.stop} to end it early.
 *
 * The engine owns the stream: it closes it when serving ends, however it ends.
 *
 * Sizes: requests are checked against the export size; a request touching
 * any byte past it gets EINVAL and never reaches the backend. When the export
 * is larger than the image (only if the two were configured inconsistently),
 * the part of a READ past the image end reads as zeros, a WRITE there is
 * accepted only if those bytes are zeros (else ENOSPC: storing them is
 * impossible and dropping them silently would lose data), and WRITE_ZEROES
 * there is a no-op.
 */
export class NbdEngine {
  readonly #stream: ByteStream;
  readonly #backend: BlockBackend;
  readonly #reader: BufferedReader;
  readonly #writer: BatchWriter<SentReply>;
  readonly #maxInflight: number;
  readonly #maxRequestBytes: number;
  readonly #maxInflightBytes: number;
  readonly #exportSize: bigint;
  readonly #imageSize: number;
  readonly #onRequestError?: (err: unknown, request: NbdRequest) => void;
  readonly #pool: BufferPool;

  /** Requests admitted and not yet replied to. */
  #inflight = 0;
  /** READ and WRITE bytes of the requests admitted and not yet replied to. */
  #inflightBytes = 0;
  /** Resolvers of everyone waiting for `#inflight` to drop. */
  #waiters: Array<() => void> = [];
  /** Backend writes in progress, which a FLUSH arriving now must wait for. */
  readonly #pendingWrites = new Set<Promise<unknown>>();
  #zeros?: Uint8Array;

  #state: EngineState = "ready";
  /** Why the engine is `failing`: what serve() rejects with. */
  #failure?: unknown;

  constructor(stream: ByteStream, backend: BlockBackend, options: NbdEngineOptions = {}) {
    this.#stream = stream;
    this.#backend = backend;
    this.#maxInflight = options.maxInflight ?? DEFAULT_MAX_INFLIGHT;
    if (!Number.isInteger(this.#maxInflight) || this.#maxInflight < 1) {
      throw new RangeError(`maxInflight must be a positive integer, not ${options.maxInflight}`);
    }
    this.#maxRequestBytes = options.maxRequestBytes ?? MAX_REQUEST_BYTES;
    this.#maxInflightBytes = options.maxInflightBytes ?? DEFAULT_MAX_INFLIGHT_BYTES;
    this.#imageSize = backend.sizeBytes;
    this.#exportSize = BigInt(options.exportSizeBytes ?? backend.sizeBytes);
    this.#onRequestError = options.onRequestError;
    this.#reader = new BufferedReader(stream, READ_BUFFER_BYTES);
    this.#writer = new BatchWriter<SentReply>(stream, {
      onDone: (reply) => this.#replied(reply),
      onError: (err) => this.#writeFailed(err),
    });
    this.#pool = new BufferPool(this.#maxInflight);
  }

  /** Requests currently admitted and not yet replied to. */
  get inflight(): number {
    return this.#inflight;
  }

  /**
   * Serve until DISC, EOF or {@link stop}; resolves once every request in
   * flight has been answered (or dropped, when stopped) and the stream is
   * closed. Rejects with {@link ProtocolError} when the peer breaks the
   * protocol and with {@link ConnectionError} when the socket fails.
   */
  async serve(): Promise<void> {
    if (!this.#begin()) return;
    try {
      await this.#readRequests();
      this.#readingEnded();
    } catch (err) {
      this.#readFailed(err);
    }
    // Requests in flight still hold backend calls and buffers: wait for them
    // so that when serve() settles, the backend is no longer being used.
    while (this.#inflight > 0) await this.#nextCompletion();
    const failure = this.#state === "failing" ? this.#failure : undefined;
    this.#enter("closed");
    if (failure !== undefined) throw failure;
  }

  /**
   * End serving now: close the stream (which aborts the pending read), drop
   * replies not yet written. {@link serve} resolves once the backend calls in
   * flight settle.
   */
  stop(): void {
    switch (this.#state) {
      case "ready":
        this.#enter("cancelled");
        break;
      case "serving":
      case "draining":
      case "failing":
        this.#enter("stopping");
        break;
      default:
        // stopping, cancelled, closed: already ended.
    }
  }

  /** serve() was called: false if it has nothing to do (stopped before it started). */
  #begin(): boolean {
    if (this.#state === "cancelled") {
      this.#enter("closed");
      return false;
    }
    if (this.#state !== "ready") throw new Error("NbdEngine.serve() may be called only once");
    this.#enter("serving");
    return true;
  }

  /**
   * DISC or EOF. Entered before any reply write can fail in a later turn, so
   * that failure reads as the peer leaving.
   */
  #readingEnded(): void {
    if (this.#state === "serving") this.#enter("draining");
  }

  /** The read loop threw: the stream is out of step or broken, unless we closed it ourselves. */
  #readFailed(err: unknown): void {
    if (this.#state !== "serving") return;
    this.#failure = err;
    this.#enter("failing");
  }

  /** The writer failed: fatal while serving; after DISC or EOF, the peer has left. */
  #writeFailed(err: unknown): void {
    if (this.#state === "serving") {
      this.#failure = err instanceof ConnectionError
        ? err
        : new ConnectionError("NBD socket write failed", { cause: err });
      this.#enter("failing");
    } else if (this.#state === "draining") {
      this.#enter("stopping");
    }
  }

  /** Move to `next`; leaving the open states closes the stream and drops unwritten replies. */
  #enter(next: EngineState): void {
    const open = this.#state === "ready" || this.#state === "serving" ||
      this.#state === "draining";
    this.#state = next;
    if (!open || next === "serving" || next === "draining") return;
    this.#writer.close();
    try {
      this.#stream.close();
    } catch {
      // Already closed by the peer side or the runtime: nothing left to release.
    }
  }

  async #readRequests(): Promise<void> {
    const header = new Uint8Array(REQUEST_BYTES);
    for (;;) {
      // A full window stops reading: back-pressure goes to the kernel's queue.
      while (this.#inflight >= this.#maxInflight && this.#state === "serving") {
        await this.#nextCompletion();
      }
      if (this.#state !== "serving") return;
      // A header already buffered is taken without a turn of the event loop, so
      // a burst of requests from one socket read is admitted in a single turn
      // (and their 9P requests leave together). EOF, even mid-header, is the
      // peer leaving: end cleanly.
      if (
        !this.#reader.takeBuffered(header) &&
        await this.#reader.readFull(header) < REQUEST_BYTES
      ) {
        return;
      }
      const request = decodeRequest(header);
      if (request.type === NbdCommand.disc) return;

      if (
        (request.type === NbdCommand.read || request.type === NbdCommand.write) &&
        request.length > this.#maxRequestBytes
      ) {
        throw new ProtocolError(
          `NBD ${commandName(request.type)} of ${request.length} bytes exceeds the ` +
            `${this.#maxRequestBytes}-byte limit`,
        );
      }
      const refusal = this.#refusal(request);
      // Data in flight is bounded too, not only requests: 64 requests of 32 MiB
      // would be 2 GiB of buffers. One request is always admitted, whatever its size.
      const dataBytes = refusal === NbdError.ok && carriesData(request) ? request.length : 0;
      while (
        this.#inflight > 0 && this.#inflightBytes + dataBytes > this.#maxInflightBytes &&
        this.#state === "serving"
      ) {
        await this.#nextCompletion();
      }
      if (this.#state !== "serving") return;

      let buffer: Uint8Array | undefined;
      if (request.type === NbdCommand.write) {
        // The payload is on the wire whatever the answer: consume it to stay in step.
        if (refusal !== NbdError.ok) {
          if (!await this.#reader.discard(request.length)) return;
        } else {
          buffer = this.#pool.acquire(request.length);
          const payload = buffer.subarray(SIMPLE_REPLY_BYTES, SIMPLE_REPLY_BYTES + request.length);
          if (
            !this.#reader.takeBuffered(payload) &&
            await this.#reader.readFull(payload) < request.length
          ) {
            return;
          }
        }
      }
      this.#admit(request, refusal, buffer, dataBytes);
    }
  }

  /** The error to refuse `request` with without calling the backend, or 0. */
  #refusal(request: NbdRequest): number {
    switch (request.type) {
      case NbdCommand.read:
        return this.#inRange(request) ? NbdError.ok : NbdError.EINVAL;
      case NbdCommand.write:
      case NbdCommand.writeZeroes:
        // EPERM before EINVAL: a read-only export refuses every write.
        if (this.#backend.readOnly) return NbdError.EPERM;
        return this.#inRange(request) ? NbdError.ok : NbdError.EINVAL;
      case NbdCommand.flush:
        return NbdError.ok;
      default:
        // TRIM is not advertised, so receiving it (or any unknown command) is a client error.
        return NbdError.EINVAL;
    }
  }

  #inRange(request: NbdRequest): boolean {
    return request.offset + BigInt(request.length) <= this.#exportSize;
  }

  /** Start serving an admitted request; it holds a window slot until its reply is written. */
  #admit(
    request: NbdRequest,
    refusal: number,
    buffer: Uint8Array | undefined,
    dataBytes: number,
  ): void {
    this.#inflight++;
    this.#inflightBytes += dataBytes;
    if (refusal === NbdError.ok && request.type === NbdCommand.read) {
      buffer = this.#pool.acquire(request.length);
    }
    const work = refusal !== NbdError.ok
      ? Promise.resolve(refusal)
      : this.#perform(request, buffer);
    if (request.type === NbdCommand.write || request.type === NbdCommand.writeZeroes) {
      this.#pendingWrites.add(work);
      const forget = () => this.#pendingWrites.delete(work);
      work.then(forget, forget);
    }
    void this.#reply(request, work, buffer, dataBytes);
  }

  /**
   * Do what `request` asks. Called synchronously at admission, so a FLUSH
   * sees exactly the writes admitted before it. Resolves with the NBD error
   * to reply (0 for success); rejects with what the backend threw.
   */
  #perform(request: NbdRequest, buffer: Uint8Array | undefined): Promise<number> {
    const offset = Number(request.offset);
    const fua = (request.flags & CommandFlag.fua) !== 0;
    switch (request.type) {
      case NbdCommand.read:
        return this.#readAt(offset, buffer!, request.length);
      case NbdCommand.write:
        return this.#writeAt(
          offset,
          buffer!.subarray(
            SIMPLE_REPLY_BYTES,
            SIMPLE_REPLY_BYTES + request.length,
          ),
          fua,
        );
      case NbdCommand.writeZeroes:
        return this.#writeZeroesAt(offset, request.length, fua);
      case NbdCommand.flush:
        return this.#flushAfter([...this.#pendingWrites]);
      default:
        return Promise.resolve(NbdError.EINVAL);
    }
  }

  /** Bytes of `[offset, offset + length)` that exist in the image. */
  #inImage(offset: number, length: number): number {
    return Math.max(0, Math.min(length, this.#imageSize - offset));
  }

  async #readAt(offset: number, buffer: Uint8Array, length: number): Promise<number> {
    const dest = buffer.subarray(SIMPLE_REPLY_BYTES, SIMPLE_REPLY_BYTES + length);
    const present = this.#inImage(offset, length);
    if (present > 0) await this.#backend.read(offset, dest.subarray(0, present));
    // Pooled buffers hold old data: the part past the image must be zeroed explicitly.
    if (present < length) dest.fill(0, present);
    return NbdError.ok;
  }

  async #writeAt(offset: number, data: Uint8Array, fua: boolean): Promise<number> {
    const present = this.#inImage(offset, data.length);
    if (present < data.length && !isAllZero(data.subarray(present))) return NbdError.ENOSPC;
    if (present > 0) await this.#backend.write(offset, data.subarray(0, present));
    if (fua) await this.#backend.flush();
    return NbdError.ok;
  }

  async #writeZeroesAt(offset: number, length: number, fua: boolean): Promise<number> {
    const present = this.#inImage(offset, length);
    // One zero buffer for the engine's lifetime; the backend only reads from it.
    const zeros = this.#zeros ??= new Uint8Array(ZERO_CHUNK_BYTES);
    for (let done = 0; done < present;) {
      const chunk = Math.min(zeros.length, present - done);
      await this.#backend.write(offset + done, zeros.subarray(0, chunk));
      done += chunk;
    }
    if (fua) await this.#backend.flush();
    return NbdError.ok;
  }

  /**
   * A FLUSH must cover every write acknowledged before it arrived. Waiting
   * for every write in flight at arrival (a superset of those) and then
   * flushing the backend is the simplest rule that is always right.
   */
  async #flushAfter(earlierWrites: Promise<unknown>[]): Promise<number> {
    if (this.#backend.readOnly) return NbdError.ok; // nothing was ever written
    await Promise.allSettled(earlierWrites);
    await this.#backend.flush();
    return NbdError.ok;
  }

  /** Wait for `work`, then queue the reply; never rejects. */
  async #reply(
    request: NbdRequest,
    work: Promise<number>,
    buffer: Uint8Array | undefined,
    dataBytes: number,
  ): Promise<void> {
    let error: number;
    let bufferReusable = true;
    try {
      error = await work;
    } catch (err) {
      error = nbdErrorFor(err);
      // A backend that gave up on a request (a timeout, say) may still write
      // into its buffer later: never hand that buffer to another request.
      bufferReusable = false;
      try {
        this.#onRequestError?.(err, request);
      } catch {
        // A logging hook must not be able to take the connection down.
      }
    }
    // The header goes in the room the request buffer keeps before its data (the
    // backend only ever sees the data part), so a READ reply is one write.
    const out = buffer ?? new Uint8Array(SIMPLE_REPLY_BYTES);
    encodeSimpleReply(error, request.cookie, out);
    const withData = error === NbdError.ok && request.type === NbdCommand.read;
    // The request keeps its window slot and its buffer until the reply is
    // written: the stream reads from the buffer until then.
    this.#writer.write(
      out.subarray(0, SIMPLE_REPLY_BYTES + (withData ? request.length : 0)),
      { buffer: bufferReusable ? buffer : undefined, dataBytes },
    );
  }

  /** A reply was written (or dropped): give back its slot, its bytes and its buffer. */
  #replied(reply: SentReply): void {
    if (reply.buffer) this.#pool.release(reply.buffer);
    this.#inflight--;
    this.#inflightBytes -= reply.dataBytes;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }

  #nextCompletion(): Promise<void> {
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
}

/** READ and WRITE move data (and hold a buffer for it); other commands do not. */
function carriesData(request: NbdRequest): boolean {
  return request.type === NbdCommand.read || request.type === NbdCommand.write;
}

/** True when every byte of `bytes` is zero. */
function isAllZero(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

/** Buffers above this are allocated per request and left to the GC. */
const MAX_POOLED_DATA_BYTES = 4 * 1024 * 1024;
/** Smallest size class: tiny requests share one class. */
const MIN_POOLED_DATA_BYTES = 4096;
/** Bytes the pool may keep idle across all classes. */
const MAX_IDLE_POOL_BYTES = 8 * 1024 * 1024;

/**
 * Request buffers: a reply header's room followed by the data (READ result or
 * WRITE payload), so a READ reply is one contiguous write. Sizes are rounded
 * up to powers of two so buffers recycle across similar requests; at most
 * `maxPerClass` idle buffers are kept per size.
 */
class BufferPool {
  readonly #free = new Map<number, Uint8Array[]>();
  readonly #maxPerClass: number;
  #idleBytes = 0;

  constructor(maxPerClass: number) {
    this.#maxPerClass = maxPerClass;
  }

  /** A buffer with room for the reply header and `dataBytes` of data after it. */
  acquire(dataBytes: number): Uint8Array {
    const size = sizeClass(dataBytes);
    if (size === undefined) return new Uint8Array(SIMPLE_REPLY_BYTES + dataBytes);
    const buffer = this.#free.get(size)?.pop();
    if (buffer) {
      this.#idleBytes -= buffer.length;
      return buffer;
    }
    return new Uint8Array(SIMPLE_REPLY_BYTES + size);
  }

  release(buffer: Uint8Array): void {
    const size = buffer.length - SIMPLE_REPLY_BYTES;
    if (sizeClass(size) !== size) return;
    if (this.#idleBytes + buffer.length > MAX_IDLE_POOL_BYTES) return;
    let list = this.#free.get(size);
    if (!list) this.#free.set(size, list = []);
    if (list.length >= this.#maxPerClass) return;
    list.push(buffer);
    this.#idleBytes += buffer.length;
  }
}

/** The pooled data size for a request of `dataBytes`, or undefined when not pooled. */
function sizeClass(dataBytes: number): number | undefined {
  if (dataBytes > MAX_POOLED_DATA_BYTES) return undefined;
  let size = MIN_POOLED_DATA_BYTES;
  while (size < dataBytes) size *= 2;
  return size;
}
