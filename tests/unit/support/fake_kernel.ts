/**
 * Plays the Linux NBD driver on one end of a stream: sends requests, reads
 * simple replies, matches them to requests by cookie (reading READ data only
 * for a successful READ, as the driver does) and records the order replies
 * came in.
 *
 * @module
 */

import type { ByteStream } from "../../../lib/nbd/engine.ts";
import {
  decodeSimpleReply,
  encodeRequest,
  NbdCommand,
  REQUEST_BYTES,
  SIMPLE_REPLY_BYTES,
} from "../../../lib/nbd/wire.ts";

/** What came back for one request. */
export interface FakeReply {
  cookie: bigint;
  error: number;
  /** The data of a successful READ. */
  data?: Uint8Array;
}

/** A request as a test writes it; the cookie is chosen by the fake kernel unless given. */
export interface FakeRequest {
  type: number;
  offset?: bigint | number;
  length?: number;
  flags?: number;
  /** WRITE payload; its length is the request length unless `length` says otherwise. */
  data?: Uint8Array;
  cookie?: bigint;
}

interface Pending {
  type: number;
  length: number;
  resolve: (reply: FakeReply) => void;
  reject: (err: Error) => void;
}

/** The kernel's side of an NBD socket. */
export class FakeKernel {
  readonly #stream: ByteStream;
  readonly #pending = new Map<bigint, Pending>();
  #writeTail: Promise<void> = Promise.resolve();
  // Distinctive high bits, so a server that truncated cookies to 32 bits would be caught.
  #nextCookie = 0xfeed_0000_0000_0001n;
  /** Cookies in the order their replies arrived. */
  readonly replyOrder: bigint[] = [];
  /** Resolves when the server side closes the stream (EOF or error). */
  readonly ended: Promise<void>;
  /** Set when a reply made no sense (unknown cookie, bad magic). */
  violation?: Error;

  constructor(stream: ByteStream) {
    this.#stream = stream;
    this.ended = this.#readReplies();
  }

  /** Send a request and wait for its reply. */
  request(req: FakeRequest): Promise<FakeReply> {
    const cookie = req.cookie ?? this.#nextCookie++;
    const length = req.length ?? req.data?.length ?? 0;
    const reply = new Promise<FakeReply>((resolve, reject) => {
      this.#pending.set(cookie, { type: req.type, length, resolve, reject });
    });
    const header = encodeRequest({
      flags: req.flags ?? 0,
      type: req.type,
      cookie,
      offset: BigInt(req.offset ?? 0),
      length,
    });
    const frame = new Uint8Array(REQUEST_BYTES + (req.data?.length ?? 0));
    frame.set(header);
    if (req.data) frame.set(req.data, REQUEST_BYTES);
    void this.sendRaw(frame).catch((err) => this.#failAll(err));
    return reply;
  }

  read(offset: number, length: number): Promise<FakeReply> {
    return this.request({ type: NbdCommand.read, offset, length });
  }

  write(offset: number, data: Uint8Array, flags = 0): Promise<FakeReply> {
    return this.request({ type: NbdCommand.write, offset, data, flags });
  }

  flush(): Promise<FakeReply> {
    return this.request({ type: NbdCommand.flush });
  }

  writeZeroes(offset: number, length: number, flags = 0): Promise<FakeReply> {
    return this.request({ type: NbdCommand.writeZeroes, offset, length, flags });
  }

  /** Send DISC (which has no reply). */
  disconnect(): Promise<void> {
    const header = encodeRequest({
      flags: 0,
      type: NbdCommand.disc,
      cookie: this.#nextCookie++,
      offset: 0n,
      length: 0,
    });
    return this.sendRaw(header);
  }

  /** Write bytes as they are, after everything sent before. */
  sendRaw(bytes: Uint8Array): Promise<void> {
    const written = this.#writeTail.then(async () => {
      for (let done = 0; done < bytes.length;) {
        done += await this.#stream.write(bytes.subarray(done));
      }
    });
    this.#writeTail = written.catch(() => {});
    return written;
  }

  /** Requests sent and not yet answered. */
  get outstanding(): number {
    return this.#pending.size;
  }

  close(): void {
    try {
      this.#stream.close();
    } catch {
      // Already closed.
    }
  }

  async #readReplies(): Promise<void> {
    const header = new Uint8Array(SIMPLE_REPLY_BYTES);
    try {
      for (;;) {
        if (!await this.#readFull(header)) break;
        const { error, cookie } = decodeSimpleReply(header);
        const pending = this.#pending.get(cookie);
        if (!pending) throw new Error(`reply with unknown cookie 0x${cookie.toString(16)}`);
        this.#pending.delete(cookie);
        this.replyOrder.push(cookie);
        if (pending.type === NbdCommand.read && error === 0) {
          const data = new Uint8Array(pending.length);
          if (!await this.#readFull(data)) throw new Error("EOF inside READ reply data");
          pending.resolve({ cookie, error, data });
        } else {
          pending.resolve({ cookie, error });
        }
      }
      this.#failAll(new Error("server closed the connection"));
    } catch (err) {
      if (!(err instanceof Deno.errors.BadResource)) {
        this.violation = err instanceof Error ? err : new Error(String(err));
      }
      this.#failAll(this.violation ?? new Error("connection closed"));
    }
  }

  /** Fill `dest`; false on EOF (a reply cut short is as good as none). */
  async #readFull(dest: Uint8Array): Promise<boolean> {
    for (let filled = 0; filled < dest.length;) {
      const n = await this.#stream.read(dest.subarray(filled));
      if (n === null) return false;
      filled += n;
    }
    return true;
  }

  #failAll(err: Error): void {
    for (const pending of this.#pending.values()) pending.reject(err);
    this.#pending.clear();
  }
}
