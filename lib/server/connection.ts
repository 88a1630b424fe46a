/**
 * One client connection of the export server: cut the stream into frames,
 * run requests concurrently, send replies in completion order, honour
 * Tflush, and keep a slow or hostile client from costing anyone else.
 *
 * - **Backpressure**: a request holds one of `maxInflight` slots from the
 *   moment it is read until its reply has been written to the socket. With
 *   every slot taken the connection stops reading, so a client that sends
 *   without reading replies stalls only itself, holding at most
 *   `maxInflight` replies in memory.
 * - **msize**: a frame larger than the negotiated msize (before Tversion:
 *   the server's largest) drops the connection before it is buffered.
 * - **Bad frames** (ill-formed, reused tag, reply types) drop the connection
 *   with a log line; nothing a client sends can throw out of here.
 * - **Tflush(oldtag)**: the old request's reply is dropped if it has not
 *   been queued yet; Rflush is queued after the old reply was queued or
 *   dropped, so the client sees it last.
 *
 * @module
 */

import { describeError, P9Error, ProtocolError } from "../errors.ts";
import { logger } from "../log.ts";
import { BatchWriter } from "../io.ts";
import { type ByteStream, FrameReader } from "../p9/transport.ts";
import { decode, encode, MsgType, msgTypeName, NOTAG, peekHeader } from "../p9/wire.ts";
import { Errno } from "../errno.ts";
import type { ServerAuth } from "./auth.ts";
import type { ExportTable } from "./exports.ts";
import { FidTable } from "./fids.ts";
import {
  handle,
  handledTypes,
  type HandlerContext,
  mutatingTypes,
  type Request,
} from "./handlers.ts";

const log = logger("server");

/** Settings shared by every connection. */
export interface ConnectionOptions {
  exports: ExportTable;
  readOnly: boolean;
  /** Largest msize granted. */
  maxMsize: number;
  /** Requests a connection may have in flight (read but reply not yet written). */
  maxInflight: number;
  /** Fids a connection may hold. */
  maxFids: number;
  /** MUNGE authentication, when every attach must be authenticated. */
  auth?: ServerAuth;
}

/** Smallest msize the server agrees to: a header and a useful payload. */
export const MIN_MSIZE = 4096;

interface InFlight {
  /** Flushed: its reply is dropped. */
  flushed: boolean;
  /** Resolves when its reply was queued or dropped. */
  settled: Promise<void>;
}

/** One client. {@link Connection.run} resolves when the connection has ended. */
export class Connection implements HandlerContext {
  msize: number;
  readonly fids: FidTable;
  readonly exports: ExportTable;
  readonly readOnly: boolean;
  readonly auth: ServerAuth | undefined;
  authenticatedUid: number | undefined;
  readonly #reader: FrameReader;
  readonly #inflight = new Map<number, InFlight>();
  #slotsUsed = 0;
  #slotFreed: (() => void) | undefined;
  /** Replies in completion order; each holds its request's slot until written. */
  readonly #writer: BatchWriter;
  #versioned = false;
  #dead = false;

  constructor(
    readonly stream: ByteStream,
    readonly label: string,
    readonly options: ConnectionOptions,
  ) {
    this.msize = options.maxMsize;
    this.fids = new FidTable(options.maxFids);
    this.exports = options.exports;
    this.readOnly = options.readOnly;
    this.auth = options.auth;
    this.#reader = new FrameReader(stream, options.maxMsize, 128 * 1024);
    this.#writer = new BatchWriter(stream, {
      onDone: () => this.#releaseSlot(),
      onError: (err) => {
        if (!this.#dead) log.debug(`${this.label}: write failed: ${describeError(err)}`);
        this.close();
      },
    });
  }

  /** True once the connection is dropped or closed. */
  get closed(): boolean {
    return this.#dead;
  }

  /** Requests read and not yet answered on the socket (at most `maxInflight`). */
  get inflight(): number {
    return this.#slotsUsed;
  }

  /** Reply bytes queued or being written, not yet taken by the socket. */
  get unsentBytes(): number {
    return this.#writer.pendingBytes;
  }

  /** Serve until the client goes away or is dropped. Never throws. */
  async run(): Promise<void> {
    try {
      while (!this.#dead) {
        while (this.#slotsUsed >= this.options.maxInflight && !this.#dead) {
          await new Promise<void>((resolve) => this.#slotFreed = resolve);
        }
        if (this.#dead) break;
        const frame = await this.#reader.next();
        if (frame === null) {
          log.debug(`${this.label}: disconnected`);
          break;
        }
        await this.#dispatch(frame);
      }
    } catch (err) {
      if (!this.#dead) {
        const what = err instanceof ProtocolError ? "bad frame" : "connection error";
        log.warn(`dropping client ${this.label}: ${what}: ${describeError(err)}`);
      }
    } finally {
      this.close();
    }
  }

  /** Drop the connection; requests still running finish and their replies are discarded. */
  close(): void {
    if (this.#dead) return;
    this.#dead = true;
    this.fids.clear();
    try {
      this.stream.close();
    } catch {
      // Already closed.
    }
    this.#slotFreed?.();
    this.#writer.close();
  }

  /** Look at one frame (a view valid only until the next read) and start its request. */
  async #dispatch(frame: Uint8Array): Promise<void> {
    const { type, tag } = peekHeader(frame);
    if (type === MsgType.Tversion) {
      await this.#version(frame, tag);
      return;
    }
    if (tag === NOTAG || this.#inflight.has(tag)) {
      throw new ProtocolError(`${msgTypeName(type)} uses tag ${tag}, which is in use or NOTAG`);
    }
    if (type === MsgType.Tflush) {
      const { msg } = decode(frame);
      this.#flush(tag, (msg as { oldtag: number }).oldtag);
      return;
    }
    if (!this.#versioned) {
      this.#start(tag, () => Promise.reject(new P9Error(Errno.EPROTO, "no Tversion yet")));
      return;
    }
    if (!handledTypes.has(type)) {
      const errno = mutatingTypes.has(type) && this.readOnly ? Errno.EROFS : Errno.EOPNOTSUPP;
      this.#start(tag, () => Promise.reject(new P9Error(errno, msgTypeName(type))));
      return;
    }
    let request = decode(frame).msg as Request;
    // The frame's bytes are reused by the next read: keep a copy of the payload.
    if (request.type === MsgType.Twrite) request = { ...request, data: request.data.slice() };
    this.#start(tag, () => handle(this, tag, request));
  }

  /**
   * Tversion: negotiate msize; everything in flight is abandoned, every fid
   * clunked, and the connection is no longer authenticated.
   */
  async #version(frame: Uint8Array, tag: number): Promise<void> {
    const { msg } = decode(frame);
    const { msize, version } = msg as { msize: number; version: string };
    for (const entry of this.#inflight.values()) entry.flushed = true;
    await Promise.all([...this.#inflight.values()].map((e) => e.settled));
    this.fids.clear();
    this.authenticatedUid = undefined;
    if (msize < MIN_MSIZE) throw new ProtocolError(`client msize ${msize} is below ${MIN_MSIZE}`);
    const granted = Math.min(msize, this.options.maxMsize);
    const known = version === "9P2000.L" || version.startsWith("9P2000.L.");
    this.#versioned = known;
    this.msize = granted;
    this.#reader.maxFrameBytes = granted;
    this.#slotsUsed++;
    this.#queue(
      encode(tag, {
        type: MsgType.Rversion,
        msize: granted,
        version: known ? "9P2000.L" : "unknown",
      }),
    );
  }

  /** Tflush: drop oldtag's reply if still to come, and answer after it is settled. */
  #flush(tag: number, oldtag: number): void {
    const old = this.#inflight.get(oldtag);
    if (old) old.flushed = true;
    this.#start(tag, async () => {
      await old?.settled;
      return encode(tag, { type: MsgType.Rflush });
    });
  }

  /** Run one request concurrently; its reply (or Rlerror) is queued when it completes. */
  #start(tag: number, run: () => Promise<Uint8Array>): void {
    let settle!: () => void;
    const entry: InFlight = { flushed: false, settled: new Promise((r) => settle = r) };
    this.#inflight.set(tag, entry);
    this.#slotsUsed++;
    run().catch((err) => this.#errorReply(tag, err)).then((reply) => {
      // The tag is free once the reply is queued: the queue keeps replies in order, so a
      // Tflush naming it now gets its Rflush after this reply.
      this.#inflight.delete(tag);
      if (entry.flushed || this.#dead) {
        this.#releaseSlot();
      } else {
        this.#queue(reply);
      }
      settle();
    });
  }

  #errorReply(tag: number, err: unknown): Uint8Array {
    let errno: number = Errno.EIO;
    if (err instanceof P9Error) {
      errno = err.errno;
      log.debug(`${this.label}: ${err.message}`);
    } else {
      log.warn(`${this.label}: request failed: ${describeError(err)}`);
    }
    return encode(tag, { type: MsgType.Rlerror, ecode: errno });
  }

  #releaseSlot(): void {
    this.#slotsUsed--;
    const wake = this.#slotFreed;
    this.#slotFreed = undefined;
    wake?.();
  }

  /** Queue a reply; its slot is released once it has been written (or dropped). */
  #queue(frame: Uint8Array): void {
    this.#writer.write(frame);
  }
}
