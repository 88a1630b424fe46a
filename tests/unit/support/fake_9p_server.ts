/**
 * A scripted 9P2000.L server for unit tests: an in-memory duplex byte pipe,
 * a server loop that cuts T-frames with the real {@link FrameReader}, decodes
 * them and hands each to a script, and a ready-made script that serves a
 * `Uint8Array` as an image file (reachable over a Unix socket, so that
 * `Image.open` can dial it).
 *
 * The server records every request, which ones are still unanswered, and the
 * most that were unanswered at once, so tests can assert on concurrency.
 *
 * @module
 */

import { ConnectionError } from "../../../lib/errors.ts";
import { Session, type SessionOptions } from "../../../lib/p9/session.ts";
import { type ByteStream, FrameReader, writeAll } from "../../../lib/p9/transport.ts";
import {
  decode,
  encode,
  type Frame,
  type Message,
  MsgType,
  type Qid,
  VERSION_9P2000L,
} from "../../../lib/p9/wire.ts";

/** One end of an in-memory duplex pipe. */
class PipeEnd implements ByteStream {
  peer!: PipeEnd;
  #chunks: Uint8Array[] = [];
  #wake: (() => void) | undefined;
  #closed = false;

  constructor(
    /** Largest write accepted at once (to exercise partial writes); 0 = no limit. */
    readonly maxWriteBytes = 0,
    /** Most bytes one read returns (to exercise reassembly); 0 = no limit. */
    readonly maxReadBytes = 0,
  ) {}

  get closed(): boolean {
    return this.#closed;
  }

  async read(p: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#closed || this.peer.#closed) return null;
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
    const limit = this.maxReadBytes > 0 ? Math.min(p.length, this.maxReadBytes) : p.length;
    let n = 0;
    while (n < limit && this.#chunks.length > 0) {
      const chunk = this.#chunks[0];
      const take = Math.min(chunk.length, limit - n);
      p.set(chunk.subarray(0, take), n);
      n += take;
      if (take === chunk.length) this.#chunks.shift();
      else this.#chunks[0] = chunk.subarray(take);
    }
    return n;
  }

  write(p: Uint8Array): Promise<number> {
    if (this.#closed || this.peer.#closed) {
      return Promise.reject(new Deno.errors.BrokenPipe("pipe closed"));
    }
    const n = this.maxWriteBytes > 0 ? Math.min(p.length, this.maxWriteBytes) : p.length;
    this.peer.#push(p.slice(0, n));
    return Promise.resolve(n);
  }

  close(): void {
    this.#closed = true;
    this.#notify();
    this.peer.#notify();
  }

  #push(bytes: Uint8Array): void {
    this.#chunks.push(bytes);
    this.#notify();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}

/** Limits on the client end of a {@link duplexPair}. */
export interface PipeOptions {
  /** Most bytes one client write takes. */
  clientMaxWriteBytes?: number;
  /** Most bytes one client read returns. */
  clientMaxReadBytes?: number;
}

/** Two connected in-memory byte streams: what one writes, the other reads. */
export function duplexPair(
  options: PipeOptions = {},
): { client: ByteStream & { readonly closed: boolean }; server: PipeEnd } {
  const client = new PipeEnd(options.clientMaxWriteBytes ?? 0, options.clientMaxReadBytes ?? 0);
  const server = new PipeEnd();
  client.peer = server;
  server.peer = client;
  return { client, server };
}

/** A request as the fake server received it (Twrite data is copied). */
export interface Request {
  tag: number;
  msg: Message;
}

/** What a script does with one request; it may answer now, later, or never. */
export type Script = (request: Request, server: Fake9pServer) => void | Promise<void>;

/** Reply to Tversion granting `min(asked, grantMsize)`, or hand the request to `next`. */
export function withVersion(grantMsize: number, next: Script): Script {
  return (request, server) => {
    if (request.msg.type === MsgType.Tversion) {
      server.reply(request.tag, {
        type: MsgType.Rversion,
        msize: Math.min(request.msg.msize, grantMsize),
        version: VERSION_9P2000L,
      });
      return;
    }
    return next(request, server);
  };
}

/**
 * A scripted server over one byte stream. It reads frames until the stream
 * ends; every request goes to the script, which answers with {@link reply}
 * (or {@link sendRaw} for frames the codec would refuse to build).
 */
export class Fake9pServer {
  /** Every request received, in order. */
  readonly requests: Request[] = [];
  /** Requests received and not answered yet, by tag. */
  readonly outstanding = new Map<number, Request>();
  /** The most requests that were unanswered at the same time. */
  maxOutstanding = 0;
  /** Why the loop stopped, if it stopped on an error rather than end of stream. */
  error: unknown;
  /** Resolves when the server loop has stopped and the stream is closed. */
  readonly done: Promise<void>;
  readonly #listeners = new Set<() => void>();

  constructor(readonly stream: ByteStream, readonly script: Script) {
    this.done = this.#loop();
  }

  /** Send `msg` as the reply to `tag`. */
  reply(tag: number, msg: Message): Promise<void> {
    this.outstanding.delete(tag);
    return this.sendRaw(encode(tag, msg));
  }

  /** Send `bytes` as they are; write errors (the client hung up) are ignored. */
  async sendRaw(bytes: Uint8Array): Promise<void> {
    try {
      await writeAll(this.stream, bytes);
    } catch {
      // The client went away; the test looks at the client's side.
    }
  }

  /** Hang up. */
  disconnect(): void {
    try {
      this.stream.close();
    } catch {
      // Already closed.
    }
  }

  /** Requests of one type received so far. */
  requestsOf<T extends Message["type"]>(type: T): (Request & { msg: Message<T> })[] {
    return this.requests.filter((r) => r.msg.type === type) as (Request & {
      msg: Message<T>;
    })[];
  }

  /**
   * Resolve once `condition` holds (checked now and after every request
   * received); reject after `timeoutMs` so a broken client fails a test
   * instead of hanging it.
   */
  waitUntil(condition: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
    if (condition()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!condition()) return;
        this.#listeners.delete(check);
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#listeners.delete(check);
        reject(new Error(`fake 9P server: timed out waiting for ${what}`));
      }, timeoutMs);
      this.#listeners.add(check);
    });
  }

  async #loop(): Promise<void> {
    const reader = new FrameReader(this.stream, 0xffffff);
    try {
      while (true) {
        const frame = await reader.next();
        if (frame === null) break;
        const request = copyRequest(decode(frame));
        this.requests.push(request);
        this.outstanding.set(request.tag, request);
        this.maxOutstanding = Math.max(this.maxOutstanding, this.outstanding.size);
        for (const listener of [...this.#listeners]) listener();
        await this.script(request, this);
      }
    } catch (err) {
      if (!(err instanceof ConnectionError)) this.error = err;
    } finally {
      this.disconnect();
      for (const listener of [...this.#listeners]) listener();
    }
  }
}

/** Frames from FrameReader are views into a reused buffer; keep our own copy of data. */
function copyRequest(frame: Frame): Request {
  const msg = { ...frame.msg } as Message;
  if (msg.type === MsgType.Twrite) msg.data = msg.data.slice();
  return { tag: frame.tag, msg };
}

/** A session connected to a fake server running `script` (Tversion answered by the script). */
export async function connect(
  script: Script,
  options: SessionOptions = {},
  pipe: PipeOptions = {},
): Promise<{ session: Session; server: Fake9pServer; client: { readonly closed: boolean } }> {
  const { client, server: serverEnd } = duplexPair(pipe);
  const server = new Fake9pServer(serverEnd, script);
  const session = await Session.start(client, options);
  return { session, server, client };
}

/** The outcome of a promise, or "pending" if it has not settled within `ms`. */
export async function settleWithin<T>(
  promise: Promise<T>,
  ms = 1000,
): Promise<
  { status: "fulfilled"; value: T } | { status: "rejected"; reason: unknown } | {
    status: "pending";
  }
> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const pending = new Promise<{ status: "pending" }>((resolve) => {
    timer = setTimeout(() => resolve({ status: "pending" }), ms);
  });
  try {
    return await Promise.race([
      promise.then(
        (value) => ({ status: "fulfilled" as const, value }),
        (reason) => ({ status: "rejected" as const, reason }),
      ),
      pending,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** A qid for a regular file. */
export const FILE_QID: Qid = { type: 0, version: 1, path: 42n };
/** A qid for a directory. */
export const DIR_QID: Qid = { type: 0x80, version: 1, path: 7n };

/** How {@link imageFileScript} behaves. */
export interface FileServerOptions {
  /** Mode reported by Tgetattr (default a regular file, 0o100644). */
  mode?: number;
  /** msize granted at Tversion (default 8192 + 24). */
  msize?: number;
  /** iounit reported by Tlopen (default 0: none). */
  iounit?: number;
  /** Most bytes one Rread carries (short reads); default: all asked for. */
  maxReadReplyBytes?: number;
  /** Most bytes one Rwrite accepts (short writes); default: all sent. */
  maxWriteReplyBytes?: number;
  /** The file seems to end here: Rread stops short of it and carries nothing after it. */
  zeroReadFrom?: number;
  /**
   * Hold Treads until this many are unanswered (or 500 ms pass), then answer
   * them all in reverse order: shows whether the client sends them in parallel.
   */
  readBarrier?: number;
  /** Names a Twalk may pass through; anything else ends the walk there. */
  walkable?: string[];
}

/**
 * A script that serves `file` (modified in place by Twrite) as the image an
 * attach (and optional walk) leads to. Fids are tracked; clunked fids are
 * recorded in `clunked`.
 */
export function imageFileScript(
  file: Uint8Array,
  options: FileServerOptions = {},
): Script & { clunked: number[]; fids: Set<number> } {
  const fids = new Set<number>();
  const clunked: number[] = [];
  let held: Request[] = [];
  let barrierTimer: ReturnType<typeof setTimeout> | undefined;
  const answerRead = (request: Request, server: Fake9pServer) => {
    const msg = request.msg as Message<typeof MsgType.Tread>;
    const offset = Number(msg.offset);
    let count = Math.min(msg.count, Math.max(0, file.length - offset));
    if (options.maxReadReplyBytes !== undefined) {
      count = Math.min(count, options.maxReadReplyBytes);
    }
    if (options.zeroReadFrom !== undefined) {
      count = Math.max(0, Math.min(count, options.zeroReadFrom - offset));
    }
    server.reply(request.tag, {
      type: MsgType.Rread,
      data: file.subarray(offset, offset + count),
    });
  };
  const releaseHeld = (server: Fake9pServer) => {
    clearTimeout(barrierTimer);
    barrierTimer = undefined;
    const batch = held.reverse();
    held = [];
    for (const request of batch) answerRead(request, server);
  };
  const script: Script = (request, server) => {
    const msg = request.msg;
    const fail = (errno: number) =>
      server.reply(request.tag, { type: MsgType.Rlerror, ecode: errno });
    switch (msg.type) {
      case MsgType.Tattach:
        fids.add(msg.fid);
        return void server.reply(request.tag, { type: MsgType.Rattach, qid: DIR_QID });
      case MsgType.Twalk: {
        if (!fids.has(msg.fid)) return void fail(9); // EBADF
        const qids: Qid[] = [];
        for (const name of msg.names) {
          if (options.walkable && !options.walkable.includes(name)) break;
          qids.push(FILE_QID);
        }
        if (msg.names.length > 0 && qids.length === 0) return void fail(2); // ENOENT
        if (qids.length === msg.names.length) fids.add(msg.newfid);
        return void server.reply(request.tag, { type: MsgType.Rwalk, qids });
      }
      case MsgType.Tgetattr:
        if (!fids.has(msg.fid)) return void fail(9);
        return void server.reply(request.tag, getattrReply(options.mode ?? 0o100644, file.length));
      case MsgType.Tlopen:
        if (!fids.has(msg.fid)) return void fail(9);
        return void server.reply(request.tag, {
          type: MsgType.Rlopen,
          qid: FILE_QID,
          iounit: options.iounit ?? 0,
        });
      case MsgType.Tread:
        if (!fids.has(msg.fid)) return void fail(9);
        if (options.readBarrier === undefined) return void answerRead(request, server);
        held.push(request);
        if (held.length >= options.readBarrier) releaseHeld(server);
        else barrierTimer ??= setTimeout(() => releaseHeld(server), 500);
        return;
      case MsgType.Twrite: {
        if (!fids.has(msg.fid)) return void fail(9);
        const offset = Number(msg.offset);
        let count = msg.data.length;
        if (options.maxWriteReplyBytes !== undefined) {
          count = Math.min(count, options.maxWriteReplyBytes);
        }
        file.set(msg.data.subarray(0, count), offset);
        return void server.reply(request.tag, { type: MsgType.Rwrite, count });
      }
      case MsgType.Tfsync:
        return void server.reply(request.tag, { type: MsgType.Rfsync });
      case MsgType.Tclunk:
        fids.delete(msg.fid);
        clunked.push(msg.fid);
        return void server.reply(request.tag, { type: MsgType.Rclunk });
      default:
        return void fail(95); // EOPNOTSUPP
    }
  };
  const versioned = withVersion(options.msize ?? 8192 + 24, script);
  return Object.assign(versioned, { clunked, fids });
}

/** An Rgetattr with the given mode and size and plausible everything else. */
export function getattrReply(mode: number, sizeBytes: number): Message<typeof MsgType.Rgetattr> {
  return {
    type: MsgType.Rgetattr,
    valid: 0x7ffn,
    qid: (mode & 0o170000) === 0o040000 ? DIR_QID : FILE_QID,
    mode,
    uid: 0,
    gid: 0,
    nlink: 1n,
    rdev: 0n,
    size: BigInt(sizeBytes),
    blksize: 4096n,
    blocks: BigInt(Math.ceil(sizeBytes / 512)),
    atimeSec: 0n,
    atimeNsec: 0n,
    mtimeSec: 0n,
    mtimeNsec: 0n,
    ctimeSec: 0n,
    ctimeNsec: 0n,
    btimeSec: 0n,
    btimeNsec: 0n,
    gen: 0n,
    dataVersion: 0n,
  };
}

/**
 * Listen on a Unix socket in a fresh temporary directory and run `script`
 * for every connection, so that code which dials (Image.open) can reach the
 * fake. `close()` stops listening, hangs up and removes the directory.
 */
export async function listenUnix(script: Script): Promise<{
  path: string;
  servers: Fake9pServer[];
  close(): Promise<void>;
}> {
  const dir = await Deno.makeTempDir({ prefix: "9nbd-fake9p-" });
  const path = `${dir}/9p.sock`;
  const listener = Deno.listen({ transport: "unix", path });
  const servers: Fake9pServer[] = [];
  const accepting = (async () => {
    try {
      for await (const conn of listener) servers.push(new Fake9pServer(conn, script));
    } catch {
      // Listener closed.
    }
  })();
  return {
    path,
    servers,
    async close() {
      listener.close();
      await accepting;
      for (const server of servers) server.disconnect();
      await Promise.all(servers.map((s) => s.done));
      await Deno.remove(dir, { recursive: true });
    },
  };
}
