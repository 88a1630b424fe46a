/**
 * An image file on a 9P server, opened for block I/O: size, read and write
 * of any length (split into msize-sized requests sent in parallel, short
 * replies continued), fsync, close. Over one or several sessions
 * (`connections`) to the same server; failover lives above.
 *
 * @module
 */

import { dial, formatAddress } from "./address.ts";
import type { BlockBackend } from "./backend.ts";
import { Errno } from "./errno.ts";
import { type ConnectionError, ErrnoError, inServer, P9Error, ProtocolError } from "./errors.ts";
import { libmungeClient } from "./kernel/munge.ts";
import {
  authenticatedAttach,
  type AuthMode,
  type AuthPolicy,
  type CredentialSource,
} from "./p9/auth.ts";
import { Session } from "./p9/session.ts";
import { GetattrMask, OpenFlags, type Qid } from "./p9/wire.ts";
import type { Spec } from "./spec.ts";

/** How to open an image. */
export interface OpenOptions {
  /** Attach identity: user name (default `root`). */
  uname?: string;
  /** Attach identity: numeric uid sent as n_uname (default: this process's uid). */
  uid?: number;
  /** msize to ask for (the server may grant less). */
  msize?: number;
  /** Per-request and connect timeout. Default 10 s. */
  timeoutMs?: number;
  /** Most requests in flight on each session. */
  maxInflight?: number;
  /** 9P connections (sessions) to the server; requests go to the least busy. Default 1. */
  connections?: number;
  /** Open read-write instead of read-only. */
  writable?: boolean;
  /**
   * How to authenticate each session's attach (see lib/p9/auth.ts); left
   * out, attach without authentication. The CLI passes `auto` by default.
   */
  auth?: AuthMode;
  /** munged's socket for MUNGE credentials (default: munged's own, `/run/munge/munge.socket.2`). */
  mungeSocket?: string;
  /** Where MUNGE credentials come from instead of libmunge (tests). */
  credentials?: CredentialSource;
  /** TCP only: connect from a privileged source port (`DialOptions` in lib/address.ts). */
  privilegedPort?: boolean;
}

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;

/** One session with the image open on it. */
interface Channel {
  session: Session;
  fid: number;
}

/** Facts the server reported when the image was opened. */
interface Opened {
  sizeBytes: number;
  qid: Qid;
  iounit: number;
}

/** Open `spec` on a new session: attach (authenticated as `options.auth` says), walk, stat, open. */
async function openChannel(
  spec: Spec,
  options: OpenOptions,
): Promise<Channel & Opened> {
  const label = formatAddress(spec.address);
  const timeoutMs = options.timeoutMs ?? 10_000;
  let session: Session | undefined;
  try {
    const stream = await dial(spec.address, timeoutMs, { privilegedPort: options.privilegedPort });
    session = await Session.start(stream, {
      label,
      msize: options.msize,
      timeoutMs,
      maxInflight: options.maxInflight,
    });
    // A fresh credential for every session, reconnects included.
    const root = await authenticatedAttach(session, {
      uname: options.uname ?? "root",
      aname: spec.aname,
      nUname: options.uid ?? Deno.uid() ?? 0,
    }, authPolicy(options));
    let fid = root.fid;
    if (spec.walk.length > 0) {
      const walked = await session.walk(root.fid, spec.walk);
      await session.clunk(root.fid);
      fid = walked.fid;
    }
    const where = spec.walk.length ? `${spec.aname}//${spec.walk.join("/")}` : spec.aname;
    const attr = await session.getattr(fid, GetattrMask.BASIC);
    if ((attr.mode & S_IFMT) === S_IFDIR) {
      // Our check on what the server reported, not its answer: not a P9Error.
      throw new ErrnoError(Errno.EISDIR, `open ${where}`);
    }
    if (attr.size > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new ProtocolError(`${where} claims a size of ${attr.size} bytes`);
    }
    const flags = options.writable ? OpenFlags.RDWR : OpenFlags.RDONLY;
    const opened = await session.lopen(fid, flags).catch((err) => {
      throw err instanceof P9Error ? new P9Error(err.errno, `open ${where}`) : err;
    });
    return { session, fid, sizeBytes: Number(attr.size), qid: opened.qid, iounit: opened.iounit };
  } catch (err) {
    session?.close("open failed");
    throw inServer(label, err);
  }
}

/** What {@link OpenOptions} say about authentication, as lib/p9/auth.ts takes it. */
function authPolicy(options: OpenOptions): AuthPolicy | undefined {
  if (options.auth === undefined) return undefined;
  return {
    mode: options.auth,
    credentials: options.credentials ?? libmungeClient(options.mungeSocket),
  };
}

/** An open image. */
export class Image implements BlockBackend {
  readonly #channels: Channel[];
  readonly dead: Promise<ConnectionError>;

  private constructor(
    readonly spec: Spec,
    channels: Channel[],
    readonly sizeBytes: number,
    readonly readOnly: boolean,
    readonly qid: Qid,
    /** The iounit the server reported at open (0: none given). */
    readonly iounit: number,
  ) {
    this.#channels = channels;
    this.dead = Promise.race(channels.map((c) => c.session.dead));
  }

  /** The first session (they all share msize and server). */
  get session(): Session {
    return this.#channels[0].session;
  }

  /** The image's fid on the first session. */
  get fid(): number {
    return this.#channels[0].fid;
  }

  /** Every session. */
  get sessions(): Session[] {
    return this.#channels.map((c) => c.session);
  }

  /** True once any session died: the image must be reopened. */
  get closed(): boolean {
    return this.#channels.some((c) => c.session.closed);
  }

  /** Requests in flight over all sessions. */
  get inflight(): number {
    return this.#channels.reduce((n, c) => n + c.session.inflight, 0);
  }

  /** The server, as errors and logs name it. */
  get server(): string {
    return this.session.label;
  }

  /** Payload bytes per Tread/Twrite: the iounit if the server set one, capped by msize. */
  get chunkBytes(): number {
    const max = this.session.maxPayload;
    return this.iounit > 0 ? Math.min(this.iounit, max) : max;
  }

  /** Connect, negotiate, attach, walk, stat and open the image named by `spec`. */
  static async open(spec: Spec, options: OpenOptions = {}): Promise<Image> {
    const count = Math.max(1, options.connections ?? 1);
    const first = await openChannel(spec, options);
    const channels: Channel[] = [first];
    try {
      const rest = await Promise.allSettled(
        Array.from({ length: count - 1 }, () => openChannel(spec, options)),
      );
      for (const result of rest) if (result.status === "fulfilled") channels.push(result.value);
      const failed = rest.find((r) => r.status === "rejected");
      if (failed) throw (failed as PromiseRejectedResult).reason;
      for (const channel of channels) {
        if (channel.session.msize !== first.session.msize) {
          throw inServer(
            first.session.label,
            new ProtocolError("sessions to one server negotiated different msizes"),
          );
        }
      }
    } catch (err) {
      for (const channel of channels) channel.session.close("open failed");
      throw err;
    }
    return new Image(
      spec,
      channels,
      first.sizeBytes,
      !options.writable,
      first.qid,
      first.iounit,
    );
  }

  /** The least busy session for the next request. */
  #pick(): Channel {
    let best = this.#channels[0];
    for (const channel of this.#channels) {
      if (channel.session.inflight < best.session.inflight) best = channel;
    }
    return best;
  }

  /** Fill `dest` with the bytes at `offset`. */
  async read(offset: number, dest: Uint8Array): Promise<void> {
    this.#checkRange(offset, dest.length);
    const chunk = this.chunkBytes;
    if (dest.length <= chunk) return await this.#readFully(offset, dest);
    const parts: Promise<void>[] = [];
    for (let done = 0; done < dest.length; done += chunk) {
      parts.push(this.#readFully(offset + done, dest.subarray(done, done + chunk)));
    }
    await Promise.all(parts);
  }

  async #readFully(offset: number, dest: Uint8Array): Promise<void> {
    let done = 0;
    while (done < dest.length) {
      const { session, fid } = this.#pick();
      const n = await session.read(fid, offset + done, dest.subarray(done));
      if (n === 0) {
        throw inServer(
          this.server,
          new ProtocolError(
            `read at ${offset + done} returned no data before the image end at ${this.sizeBytes}`,
          ),
        );
      }
      done += n;
    }
  }

  /** Write all of `data` at `offset`. */
  async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw new ErrnoError(Errno.EROFS, "write");
    this.#checkRange(offset, data.length);
    const chunk = this.chunkBytes;
    const parts: Promise<void>[] = [];
    for (let done = 0; done < data.length; done += chunk) {
      parts.push(this.#writeFully(offset + done, data.subarray(done, done + chunk)));
    }
    await Promise.all(parts);
  }

  async #writeFully(offset: number, data: Uint8Array): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { session, fid } = this.#pick();
      const n = await session.write(fid, offset + done, data.subarray(done));
      if (n === 0) {
        throw inServer(this.server, new ProtocolError(`write at ${offset + done} took no bytes`));
      }
      done += n;
    }
  }

  /** Make acknowledged writes durable (Tfsync on every session that wrote). */
  async flush(): Promise<void> {
    await Promise.all(this.#channels.map(({ session, fid }) => session.fsync(fid)));
  }

  /** Clunk the image and end the sessions. */
  async close(): Promise<void> {
    await Promise.all(this.#channels.map(async ({ session, fid }) => {
      if (!session.closed) await session.clunk(fid).catch(() => {});
      session.close();
    }));
  }

  #checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.sizeBytes) {
      throw new RangeError(
        `${length} bytes at ${offset} are outside the image (${this.sizeBytes} bytes)`,
      );
    }
  }
}
