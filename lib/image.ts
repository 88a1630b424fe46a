/**
 * An image file on a 9P server, opened for block I/O: size, read and write
 * of any length (split into msize-sized requests sent in parallel, short
 * replies continued), fsync, close. One session; failover lives above.
 *
 * @module
 */

import type { BlockBackend } from "./backend.ts";
import { inServer, P9Error, ProtocolError } from "./errors.ts";
import { Session } from "./p9/session.ts";
import { dial, formatAddress } from "./p9/transport.ts";
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
  /** Most requests in flight on the session. */
  maxInflight?: number;
  /** Open read-write instead of read-only. */
  writable?: boolean;
}

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;

/** An open image. */
export class Image implements BlockBackend {
  private constructor(
    readonly spec: Spec,
    readonly session: Session,
    readonly fid: number,
    readonly sizeBytes: number,
    readonly readOnly: boolean,
    readonly qid: Qid,
    /** The iounit the server reported at open (0: none given). */
    readonly iounit: number,
  ) {}

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
    const label = formatAddress(spec.address);
    const timeoutMs = options.timeoutMs ?? 10_000;
    let session: Session | undefined;
    try {
      const stream = await dial(spec.address, timeoutMs);
      session = await Session.start(stream, {
        label,
        msize: options.msize,
        timeoutMs,
        maxInflight: options.maxInflight,
      });
      const root = await session.attach(
        options.uname ?? "root",
        spec.aname,
        options.uid ?? Deno.uid() ?? 0,
      );
      let fid = root.fid;
      if (spec.walk.length > 0) {
        const walked = await session.walk(root.fid, spec.walk);
        await session.clunk(root.fid);
        fid = walked.fid;
      }
      const where = spec.walk.length ? `${spec.aname}//${spec.walk.join("/")}` : spec.aname;
      const attr = await session.getattr(fid, GetattrMask.BASIC);
      if ((attr.mode & S_IFMT) === S_IFDIR) {
        throw new P9Error(21, `open ${where}`); // EISDIR: a directory is not an image
      }
      if (attr.size > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new ProtocolError(`${where} claims a size of ${attr.size} bytes`);
      }
      const writable = options.writable ?? false;
      const opened = await session.lopen(fid, writable ? OpenFlags.RDWR : OpenFlags.RDONLY)
        .catch((err) => {
          throw err instanceof P9Error ? new P9Error(err.errno, `open ${where}`) : err;
        });
      return new Image(
        spec,
        session,
        fid,
        Number(attr.size),
        !writable,
        opened.qid,
        opened.iounit,
      );
    } catch (err) {
      session?.close("open failed");
      throw inServer(label, err);
    }
  }

  /** Fill `dest` with the bytes at `offset`. */
  async read(offset: number, dest: Uint8Array): Promise<void> {
    this.#checkRange(offset, dest.length);
    const chunk = this.chunkBytes;
    const parts: Promise<void>[] = [];
    for (let done = 0; done < dest.length; done += chunk) {
      parts.push(this.#readFully(offset + done, dest.subarray(done, done + chunk)));
    }
    await Promise.all(parts);
  }

  async #readFully(offset: number, dest: Uint8Array): Promise<void> {
    let done = 0;
    while (done < dest.length) {
      const n = await this.session.read(this.fid, offset + done, dest.subarray(done));
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
    if (this.readOnly) throw new P9Error(30, "write"); // EROFS
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
      const n = await this.session.write(this.fid, offset + done, data.subarray(done));
      if (n === 0) {
        throw inServer(this.server, new ProtocolError(`write at ${offset + done} took no bytes`));
      }
      done += n;
    }
  }

  /** Make acknowledged writes durable (Tfsync). */
  async flush(): Promise<void> {
    await this.session.fsync(this.fid);
  }

  /** Clunk the image and end the session. */
  async close(): Promise<void> {
    if (!this.session.closed) await this.session.clunk(this.fid).catch(() => {});
    this.session.close();
  }

  #checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.sizeBytes) {
      throw new RangeError(
        `${length} bytes at ${offset} are outside the image (${this.sizeBytes} bytes)`,
      );
    }
  }
}
