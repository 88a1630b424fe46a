/**
 * An NBD client for tests, in the transmission phase: the side of the socket
 * the Linux driver plays after NBD_SET_SOCK. Sends requests (one by one, or a
 * burst in one write), reads simple replies, matches them to requests by
 * cookie (reading READ data only for a successful READ, as the driver does)
 * and records the order replies came in.
 *
 * @module
 */

import type { ByteStream } from "../../../lib/io.ts";
import {
  decodeSimpleReply,
  encodeRequest,
  NbdCommand,
  REQUEST_BYTES,
  SIMPLE_REPLY_BYTES,
} from "../../../lib/nbd/wire.ts";

/** What came back for one request. */
export interface NbdClientReply {
  cookie: bigint;
  error: number;
  /** The data of a successful READ. */
  data?: Uint8Array;
}

/** A request as a test writes it; the cookie is chosen by the client unless given. */
export interface NbdClientRequest {
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
  resolve: (reply: NbdClientReply) => void;
  reject: (err: Error) => void;
}

/** The client (kernel) side of an NBD socket in the transmission phase. */
export class NbdClient {
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
  request(req: NbdClientRequest): Promise<NbdClientReply> {
    return this.burst([req])[0];
  }

  /**
   * Send `requests` in one write, as the driver does when its queue fills
   * at once, followed by DISC when `disconnect` says so: a server reading
   * them gets them all in one socket read. Returns each request's reply.
   */
  burst(requests: NbdClientRequest[], disconnect = false): Promise<NbdClientReply>[] {
    const frames = requests.map((req) => this.#frame(req));
    const pieces = frames.map((f) => f.frame);
    if (disconnect) pieces.push(this.#discFrame());
    const bytes = new Uint8Array(pieces.reduce((n, piece) => n + piece.length, 0));
    let at = 0;
    for (const piece of pieces) {
      bytes.set(piece, at);
      at += piece.length;
    }
    void this.sendRaw(bytes).catch((err) => this.#failAll(err));
    return frames.map((f) => f.reply);
  }

  read(offset: number, length: number): Promise<NbdClientReply> {
    return this.request({ type: NbdCommand.read, offset, length });
  }

  write(offset: number, data: Uint8Array, flags = 0): Promise<NbdClientReply> {
    return this.request({ type: NbdCommand.write, offset, data, flags });
  }

  flush(): Promise<NbdClientReply> {
    return this.request({ type: NbdCommand.flush });
  }

  writeZeroes(offset: number, length: number, flags = 0): Promise<NbdClientReply> {
    return this.request({ type: NbdCommand.writeZeroes, offset, length, flags });
  }

  /** Send DISC (which has no reply). */
  disconnect(): Promise<void> {
    return this.sendRaw(this.#discFrame());
  }

  #discFrame(): Uint8Array {
    return encodeRequest({
      flags: 0,
      type: NbdCommand.disc,
      cookie: this.#nextCookie++,
      offset: 0n,
      length: 0,
    });
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

  /** Register `req` as pending and encode it: its header, then any WRITE payload. */
  #frame(req: NbdClientRequest): { frame: Uint8Array; reply: Promise<NbdClientReply> } {
    const cookie = req.cookie ?? this.#nextCookie++;
    const length = req.length ?? req.data?.length ?? 0;
    const reply = new Promise<NbdClientReply>((resolve, reject) => {
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
    return { frame, reply };
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
