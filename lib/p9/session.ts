/**
 * One 9P2000.L session over one byte stream: version negotiation, a tag pool
 * with many requests in flight, a fid pool, Tflush for abandoned requests and
 * a per-request timeout.
 *
 * States: OPEN (after a successful Tversion) → DEAD. A session dies once, for
 * one reason (the stream ended or failed, a frame broke the protocol, a
 * request timed out, or close() was called); every pending and every later
 * request then fails with a retriable {@link ConnectionError} whose cause is
 * that reason. A session is never revived: the failover layer makes a new one.
 *
 * @module
 */

import { Errno, errnoName, maxErrno } from "../errno.ts";
import {
  ConnectionError,
  describeError,
  ErrnoError,
  P9Error,
  ProtocolError,
  TimeoutError,
} from "../errors.ts";
import { BatchWriter } from "../io.ts";
import { type ByteStream, FrameReader } from "./transport.ts";
import {
  decode,
  encode,
  encodeTread,
  encodeTwriteHeader,
  frameTag,
  IOHDRSZ,
  MAXWELEM,
  type Message,
  MsgType,
  msgTypeName,
  NOFID,
  NOTAG,
  type Qid,
  RREAD_HEADER_BYTES,
  rreadDataBytes,
  rwriteCount,
  VERSION_9P2000L,
} from "./wire.ts";

/** Options for {@link Session.start}. */
export interface SessionOptions {
  /** msize to ask for; the server may grant less. Default 1 MiB + IOHDRSZ. */
  msize?: number;
  /** A request unanswered this long declares the connection dead. Default 10 s. */
  timeoutMs?: number;
  /** Most requests outstanding at once; more wait for a free slot. Default 64. */
  maxInflight?: number;
  /** How errors name the server, for example `127.0.0.1:564`. */
  label?: string;
}

/** Smallest msize worth using: room for a header and a useful payload. */
const MIN_MSIZE = 4096;

interface Pending {
  expect: number;
  /** What the request did, for error messages (with `span`, made only when needed). */
  operation: string;
  sentAtMs: number;
  resolve(msg: Message): void;
  reject(err: Error): void;
  /** For Tread: the caller's buffer the reply's data is copied into. */
  sink?: Uint8Array;
  /** For Tread and Twrite: the bytes and the file offset, for error messages. */
  span?: { bytes: number; offset: number };
  /** Abandoned by its caller; a Tflush is on its way and the tag stays reserved until Rflush. */
  flushed: boolean;
  /** The request holds a window slot, released when it settles. */
  counted: boolean;
  signal?: AbortSignal;
  onAbort?: () => void;
}

/** Options of one request. */
interface RequestOptions {
  tag?: number;
  sink?: Uint8Array;
  span?: { bytes: number; offset: number };
  signal?: AbortSignal;
  bypassWindow?: boolean;
}

const NO_OPTIONS: RequestOptions = {};

/** Counters a session keeps. */
export interface SessionStats {
  /** Data bytes that Rreads brought. */
  bytesRead: number;
}

/** A 9P2000.L client session. */
export class Session {
  readonly label: string;
  readonly timeoutMs: number;
  readonly maxInflight: number;
  readonly stats: SessionStats = { bytesRead: 0 };
  #msize: number;
  readonly #stream: ByteStream;
  readonly #reader: FrameReader;
  readonly #writer: BatchWriter;
  readonly #pending = new Map<number, Pending>();
  #inflight = 0;
  readonly #slotWaiters: (() => void)[] = [];
  readonly #freeTags: number[] = [];
  #nextTag = 0;
  readonly #freeFids: number[] = [];
  #nextFid = 1;
  #death: ConnectionError | undefined;
  readonly #dead: Promise<ConnectionError>;
  #markDead!: (err: ConnectionError) => void;
  readonly #sweeper: ReturnType<typeof setInterval>;

  private constructor(stream: ByteStream, options: SessionOptions) {
    this.#stream = stream;
    this.label = options.label ?? "9P server";
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.maxInflight = Math.max(1, options.maxInflight ?? 64);
    this.#msize = options.msize ?? (1 << 20) + IOHDRSZ;
    this.#reader = new FrameReader(stream, this.#msize);
    this.#writer = new BatchWriter(stream, {
      onError: (cause) =>
        this.#die(new ConnectionError(`send failed: ${describeError(cause)}`, { cause })),
    });
    this.#dead = new Promise((resolve) => this.#markDead = resolve);
    // One coarse timer instead of one per request: requests are many and
    // short, and a few hundred milliseconds of slack on a 10 s timeout is fine.
    const sweepMs = Math.max(50, Math.min(1000, this.timeoutMs / 4));
    this.#sweeper = setInterval(() => this.#sweep(), sweepMs);
    this.#sweeper.unref();
    this.#readLoop();
  }

  /** Negotiate the version on `stream` and return an open session. */
  static async start(stream: ByteStream, options: SessionOptions = {}): Promise<Session> {
    const session = new Session(stream, options);
    const asked = session.#msize;
    try {
      const reply = await session.#request(
        { type: MsgType.Tversion, msize: asked, version: VERSION_9P2000L },
        MsgType.Rversion,
        "version",
        { tag: NOTAG },
      );
      if (reply.version !== VERSION_9P2000L) {
        throw new ProtocolError(`server speaks "${reply.version}", not ${VERSION_9P2000L}`);
      }
      if (reply.msize > asked || reply.msize < MIN_MSIZE) {
        throw new ProtocolError(`server granted msize ${reply.msize} (asked for ${asked})`);
      }
      session.#msize = reply.msize;
      session.#reader.maxFrameBytes = reply.msize;
      return session;
    } catch (err) {
      session.#die(err);
      throw session.#death!;
    }
  }

  /** The negotiated maximum frame size. */
  get msize(): number {
    return this.#msize;
  }

  /** Most payload bytes one Tread/Twrite can carry on this session. */
  get maxPayload(): number {
    return this.#msize - IOHDRSZ;
  }

  /** True once the session is dead. */
  get closed(): boolean {
    return this.#death !== undefined;
  }

  /** Resolves with the reason when the session dies. */
  get dead(): Promise<ConnectionError> {
    return this.#dead;
  }

  /** Requests sent and not yet answered. */
  get inflight(): number {
    return this.#inflight;
  }

  /** End the session; pending requests fail with a retriable error. */
  close(reason = "session closed"): void {
    this.#die(new ConnectionError(reason));
  }

  allocFid(): number {
    return this.#freeFids.pop() ?? this.#nextFid++;
  }

  releaseFid(fid: number): void {
    if (fid !== NOFID) this.#freeFids.push(fid);
  }

  /**
   * Attach to `aname` as `uname`/`nUname`; returns the new fid. `afid` is an
   * authentication fid from {@link auth} that holds the credential, or
   * NOFID (the default) to attach without authentication.
   */
  async attach(
    uname: string,
    aname: string,
    nUname: number,
    afid: number = NOFID,
  ): Promise<{ fid: number; qid: Qid }> {
    const fid = this.allocFid();
    try {
      const reply = await this.#request(
        { type: MsgType.Tattach, fid, afid, uname, aname, nUname },
        MsgType.Rattach,
        `attach ${aname}`,
      );
      return { fid, qid: reply.qid };
    } catch (err) {
      this.releaseFid(fid);
      throw err;
    }
  }

  /**
   * Tauth: ask for an authentication fid for attaching to `aname` as
   * `uname`/`nUname`. The caller writes a credential into it, attaches with
   * it and clunks it. A server that needs no authentication answers with an
   * Rlerror (diod ENOENT, nfs-ganesha EOPNOTSUPP), a {@link P9Error} here,
   * and the fid goes back to the pool.
   */
  async auth(
    uname: string,
    aname: string,
    nUname: number,
  ): Promise<{ afid: number; aqid: Qid }> {
    const afid = this.allocFid();
    try {
      const reply = await this.#request(
        { type: MsgType.Tauth, afid, uname, aname, nUname },
        MsgType.Rauth,
        `auth ${aname}`,
      );
      return { afid, aqid: reply.aqid };
    } catch (err) {
      this.releaseFid(afid);
      throw err;
    }
  }

  /**
   * Walk from `fid` along `names` (any number, sent 16 at a time) to a new
   * fid. A walk that stops short fails with ENOENT and creates no fid.
   */
  async walk(fid: number, names: string[]): Promise<{ fid: number; qids: Qid[] }> {
    const newfid = this.allocFid();
    const qids: Qid[] = [];
    let from = fid;
    try {
      let done = 0;
      do {
        const part = names.slice(done, done + MAXWELEM);
        const reply = await this.#request(
          { type: MsgType.Twalk, fid: from, newfid, names: part },
          MsgType.Rwalk,
          `walk ${names.join("/") || "."}`,
        );
        if (reply.qids.length !== part.length) {
          // A short Rwalk is a success reply, so this ENOENT is ours, not an Rlerror.
          throw new ErrnoError(
            Errno.ENOENT,
            `walk ${names.slice(0, done + reply.qids.length + 1).join("/")}`,
          );
        }
        qids.push(...reply.qids);
        done += part.length;
        from = newfid;
      } while (done < names.length);
      return { fid: newfid, qids };
    } catch (err) {
      // After the first step newfid exists on the server and must be clunked.
      if (from === newfid) await this.clunk(newfid).catch(() => {});
      else this.releaseFid(newfid);
      throw err;
    }
  }

  getattr(fid: number, requestMask: bigint): Promise<Message<typeof MsgType.Rgetattr>> {
    return this.#request({ type: MsgType.Tgetattr, fid, requestMask }, MsgType.Rgetattr, "getattr");
  }

  lopen(fid: number, flags: number): Promise<Message<typeof MsgType.Rlopen>> {
    return this.#request({ type: MsgType.Tlopen, fid, flags }, MsgType.Rlopen, "open");
  }

  statfs(fid: number): Promise<Message<typeof MsgType.Rstatfs>> {
    return this.#request({ type: MsgType.Tstatfs, fid }, MsgType.Rstatfs, "statfs");
  }

  async fsync(fid: number, datasync = false): Promise<void> {
    await this.#request(
      { type: MsgType.Tfsync, fid, datasync: datasync ? 1 : 0 },
      MsgType.Rfsync,
      "fsync",
    );
  }

  /** Clunk `fid`; the fid is released whatever the server answers. */
  async clunk(fid: number): Promise<void> {
    try {
      await this.#request({ type: MsgType.Tclunk, fid }, MsgType.Rclunk, "clunk");
    } finally {
      this.releaseFid(fid);
    }
  }

  /**
   * Read up to `dest.length` (≤ maxPayload) bytes at `offset` into `dest`;
   * returns how many came (0 at end of file). The reply is copied straight
   * from the receive buffer into `dest`.
   */
  async read(fid: number, offset: number, dest: Uint8Array, signal?: AbortSignal): Promise<number> {
    const count = dest.length;
    const reply = await this.#request(
      (tag) => encodeTread(tag, fid, offset, count),
      MsgType.Rread,
      "read",
      { sink: dest, span: { bytes: count, offset }, signal },
    );
    return reply.data.length;
  }

  /** Write `data` (≤ maxPayload bytes) at `offset`; returns how many the server took. */
  async write(
    fid: number,
    offset: number,
    data: Uint8Array,
    signal?: AbortSignal,
  ): Promise<number> {
    const reply = await this.#request(
      (tag) => [encodeTwriteHeader(tag, fid, offset, data.length), data],
      MsgType.Rwrite,
      "write",
      { span: { bytes: data.length, offset }, signal },
    );
    if (reply.count > data.length) {
      this.#die(new ProtocolError(`Rwrite count ${reply.count} exceeds the ${data.length} sent`));
      throw this.#death!;
    }
    return reply.count;
  }

  /**
   * Send one request and wait for its reply. The reply must be `expect` or
   * Rlerror (which becomes a P9Error); anything else kills the session.
   */
  async #request<R extends Message["type"]>(
    msg: Message | ((tag: number) => Uint8Array | Uint8Array[]),
    expect: R,
    operation: string,
    options: RequestOptions = NO_OPTIONS,
  ): Promise<Message<R>> {
    if (this.#death) throw this.#death;
    const signal = options.signal;
    signal?.throwIfAborted();
    const counted = !options.bypassWindow && options.tag === undefined;
    if (counted) {
      // A free slot is taken at once: waiting costs a turn even when there is no wait.
      if (this.#inflight < this.maxInflight) this.#inflight++;
      else await this.#acquireSlot();
      if (this.#death) {
        this.#releaseSlot();
        throw this.#death;
      }
    }
    const tag = options.tag ?? this.#allocTag();
    const frame = typeof msg === "function" ? msg(tag) : encode(tag, msg);
    const { promise, resolve, reject } = Promise.withResolvers<Message<R>>();
    const entry: Pending = {
      expect,
      operation,
      sentAtMs: performance.now(),
      resolve: resolve as (m: Message) => void,
      reject,
      sink: options.sink,
      span: options.span,
      flushed: false,
      counted,
      signal,
      onAbort: undefined,
    };
    if (signal) {
      entry.onAbort = () => this.#abandon(tag, entry, signal.reason);
      signal.addEventListener("abort", entry.onAbort, { once: true });
    }
    this.#pending.set(tag, entry);
    if (frame instanceof Uint8Array) this.#writer.write(frame);
    else for (const piece of frame) this.#writer.write(piece);
    return await promise;
  }

  /** Give back what `entry` holds (its slot, its abort listener); once per entry. */
  #settle(entry: Pending): void {
    if (entry.counted) this.#releaseSlot();
    if (entry.onAbort) entry.signal!.removeEventListener("abort", entry.onAbort);
  }

  #resolve(entry: Pending, msg: Message): void {
    this.#settle(entry);
    entry.resolve(msg);
  }

  #reject(entry: Pending, err: Error): void {
    this.#settle(entry);
    entry.reject(err);
  }

  /** The request `entry` was, as error messages name it. */
  #operationOf(entry: Pending): string {
    const span = entry.span;
    return span ? `${entry.operation} ${span.bytes} bytes at ${span.offset}` : entry.operation;
  }

  /**
   * The caller gave up on the request with `tag`: fail it now, tell the
   * server with Tflush, and keep the tag reserved until Rflush so a late
   * reply to it can never be mistaken for a reply to a new request.
   */
  #abandon(tag: number, entry: Pending, reason: unknown): void {
    if (entry.flushed || this.#death) return;
    entry.flushed = true;
    this.#reject(
      entry,
      reason instanceof Error ? reason : new DOMException("aborted", "AbortError"),
    );
    this.#request({ type: MsgType.Tflush, oldtag: tag }, MsgType.Rflush, "flush", {
      bypassWindow: true,
    }).then(
      () => {
        this.#pending.delete(tag);
        this.#freeTag(tag);
      },
      () => {},
    );
  }

  async #acquireSlot(): Promise<void> {
    while (this.#inflight >= this.maxInflight) {
      await new Promise<void>((resolve) => this.#slotWaiters.push(resolve));
    }
    this.#inflight++;
  }

  #releaseSlot(): void {
    this.#inflight--;
    this.#slotWaiters.shift()?.();
  }

  #allocTag(): number {
    const tag = this.#freeTags.pop() ?? this.#nextTag++;
    if (tag >= NOTAG) throw new ConnectionError("9P tag space exhausted");
    return tag;
  }

  #freeTag(tag: number): void {
    if (tag !== NOTAG) this.#freeTags.push(tag);
  }

  async #readLoop(): Promise<void> {
    try {
      while (!this.#death) {
        const frame = await this.#reader.next();
        if (frame === null) throw new ConnectionError("connection closed by the server");
        this.#dispatch(frame);
        // Every further frame that came with the same read, in this same turn.
        for (
          let more = this.#reader.buffered();
          more && !this.#death;
          more = this.#reader.buffered()
        ) {
          this.#dispatch(more);
        }
      }
    } catch (err) {
      this.#die(err);
    }
  }

  /** Route one reply to its waiter. Runs synchronously: `frame` is reused after. */
  #dispatch(frame: Uint8Array): void {
    if (this.#dispatchRread(frame) || this.#dispatchRwrite(frame)) return;
    const { tag, msg } = decode(frame);
    const entry = this.#pending.get(tag);
    if (!entry) throw new ProtocolError(`reply ${msgTypeName(msg.type)} with unknown tag ${tag}`);
    const isError = msg.type === MsgType.Rlerror || msg.type === MsgType.Rerror;
    if (isError) {
      if (msg.ecode < 1 || msg.ecode > maxErrno || !errnoName(msg.ecode)) {
        throw new ProtocolError(`Rlerror with errno ${msg.ecode}, which Linux does not define`);
      }
    } else if (msg.type !== entry.expect) {
      throw new ProtocolError(
        `${msgTypeName(msg.type)} in reply to a request expecting ${msgTypeName(entry.expect)}`,
      );
    }
    if (entry.flushed) return; // Late reply to an abandoned request; the tag waits for Rflush.
    if (msg.type === MsgType.Rread && entry.sink && msg.data.length > entry.sink.length) {
      // Thrown while the entry is still pending, so the session's death fails it.
      throw new ProtocolError(
        `Rread of ${msg.data.length} bytes for a Tread of ${entry.sink.length}`,
      );
    }
    this.#pending.delete(tag);
    this.#freeTag(tag);
    if (isError) {
      this.#reject(entry, new P9Error(msg.ecode, this.#operationOf(entry)));
      return;
    }
    if (msg.type === MsgType.Rread) {
      const data = msg.data;
      if (entry.sink) {
        entry.sink.set(data);
        msg.data = entry.sink.subarray(0, data.length);
      } else {
        msg.data = data.slice();
      }
      this.stats.bytesRead += data.length;
    }
    this.#resolve(entry, msg);
  }

  /** Like {@link #dispatchRread}: a well-formed Rwrite for a pending Twrite, or false. */
  #dispatchRwrite(frame: Uint8Array): boolean {
    const count = rwriteCount(frame);
    if (count === undefined) return false;
    const tag = frameTag(frame);
    const entry = this.#pending.get(tag);
    if (!entry || entry.expect !== MsgType.Rwrite || entry.flushed) return false;
    this.#pending.delete(tag);
    this.#freeTag(tag);
    this.#resolve(entry, { type: MsgType.Rwrite, count });
    return true;
  }

  /**
   * The common case of {@link #dispatch}, without decoding into a message
   * first: a well-formed Rread for a pending Tread with a sink. Returns false
   * for anything else (the general path then decodes it, and reports what
   * is wrong with it).
   */
  #dispatchRread(frame: Uint8Array): boolean {
    const count = rreadDataBytes(frame);
    if (count === undefined) return false;
    const tag = frameTag(frame);
    const entry = this.#pending.get(tag);
    if (!entry || entry.expect !== MsgType.Rread || !entry.sink || entry.flushed) return false;
    if (count > entry.sink.length) return false;
    this.#pending.delete(tag);
    this.#freeTag(tag);
    entry.sink.set(frame.subarray(RREAD_HEADER_BYTES));
    this.stats.bytesRead += count;
    this.#resolve(entry, { type: MsgType.Rread, data: entry.sink.subarray(0, count) });
    return true;
  }

  #sweep(): void {
    if (this.#death) return;
    const now = performance.now();
    for (const entry of this.#pending.values()) {
      if (now - entry.sentAtMs > this.timeoutMs) {
        this.#die(
          new TimeoutError(
            `no reply to ${this.#operationOf(entry)} in ${(this.timeoutMs / 1000).toFixed(1)} s`,
          ),
        );
        return;
      }
    }
  }

  #die(reason: unknown): void {
    if (this.#death) return;
    const death = reason instanceof ConnectionError
      ? reason
      : new ConnectionError(describeError(reason), { cause: reason });
    this.#death = death;
    clearInterval(this.#sweeper);
    this.#writer.close();
    try {
      this.#stream.close();
    } catch {
      // Already closed by the peer; nothing to release.
    }
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const entry of pending) if (!entry.flushed) this.#reject(entry, death);
    for (const wake of this.#slotWaiters.splice(0)) wake();
    this.#markDead(death);
  }
}
