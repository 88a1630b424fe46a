/**
 * Decides what happens to one request when its server fails: it is
 * re-issued on the next session, never failed, unless the failure is the
 * server's considered answer, or the give-up deadline passed.
 *
 * {@link ResilientImage} composes the pieces: {@link ReplicaSet} picks the
 * session (reconnect, failover, failback), {@link ReplicaVerifier} proves
 * each one holds the attached image, {@link WriteLog} keeps the writes a new
 * session must replay. By default a request waits forever for a server (an
 * NFS hard mount); `giveUpAfterMs` makes it fail with a ConnectionError
 * after that long (soft).
 *
 * @module
 */

import type { BlockBackend } from "../backend.ts";
import { ConnectionError, describeError, isRetriable, P9Error, TimeoutError } from "../errors.ts";
import type { Image } from "../image.ts";
import type { Spec } from "../spec.ts";
import { ReplicaVerifier } from "./identity.ts";
import { ReplicaSet, type ReplicaSetOptions } from "./replicas.ts";
import { WriteLog } from "./write_log.ts";

/** How a {@link ResilientImage} behaves. */
export interface ResilientOptions extends ReplicaSetOptions {
  /** Fail a request with EIO once it has waited this long for a server; default: never. */
  giveUpAfterMs?: number;
  /** Expected SHA-256 (hex) of the whole image, checked on every replica before use. */
  sha256?: string;
}

/** Is `err` a sign that this server (not the request) is the problem? */
function serverFailed(err: unknown, readOnly: boolean): boolean {
  // A read-only replica that answers reads with errors (image removed, I/O
  // error on its disk) is failing; another replica may serve. A writable
  // image's Rlerror (ENOSPC, EIO) is the answer and goes to the kernel.
  return isRetriable(err) || (readOnly && err instanceof P9Error);
}

/** A {@link BlockBackend} over one or more replicas of an image. */
export class ResilientImage implements BlockBackend {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  readonly #replicas: ReplicaSet;
  readonly #writeLog: WriteLog;
  readonly #giveUpAfterMs: number | undefined;

  private constructor(
    replicas: ReplicaSet,
    writeLog: WriteLog,
    sizeBytes: number,
    giveUpAfterMs: number | undefined,
  ) {
    this.#replicas = replicas;
    this.#writeLog = writeLog;
    this.#giveUpAfterMs = giveUpAfterMs;
    this.sizeBytes = sizeBytes;
    this.readOnly = replicas.readOnly;
  }

  /**
   * Open the first replica that answers (see {@link ReplicaSet.open}).
   * Read-only attachments may name several servers holding the same image,
   * in order of preference; writable ones exactly one.
   */
  static async open(specs: Spec[], options: ResilientOptions = {}): Promise<ResilientImage> {
    const verifier = new ReplicaVerifier(options.sha256);
    const writeLog = new WriteLog();
    const replicas = await ReplicaSet.open(specs, options, verifier, writeLog);
    const { sizeBytes } = verifier.identity;
    return new ResilientImage(replicas, writeLog, sizeBytes, options.giveUpAfterMs);
  }

  /** The server now serving, as logs name it. */
  get server(): string {
    return this.#replicas.server;
  }

  /** Sessions re-established on the replica that was serving. */
  get reconnects(): number {
    return this.#replicas.reconnects;
  }

  /** Moves to another replica, failbacks included. */
  get failovers(): number {
    return this.#replicas.failovers;
  }

  /** The last loss or refusal, with its ISO time; null while none happened. */
  get lastError(): string | null {
    return this.#replicas.lastError;
  }

  async read(offset: number, dest: Uint8Array): Promise<void> {
    await this.#withServer((image) => image.read(offset, dest));
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    await this.#withServer((image) => image.write(offset, data));
    this.#writeLog.record(offset, data, () => this.flush());
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.#writeLog.flush(() => this.#withServer((image) => image.flush()));
  }

  /** Stop serving: close the session and any background work. */
  async close(): Promise<void> {
    await this.#replicas.close();
  }

  /**
   * Run `operation` on a live, verified session, retrying on the next
   * session whenever the server fails, until it succeeds, fails for a
   * reason of its own, or the give-up deadline passes.
   */
  async #withServer(operation: (image: Image) => Promise<void>): Promise<void> {
    const deadline = this.#giveUpAfterMs === undefined
      ? Infinity
      : performance.now() + this.#giveUpAfterMs;
    while (true) {
      const image = await this.#usable(deadline);
      try {
        await operation(image);
        return;
      } catch (err) {
        if (this.#replicas.closed || !serverFailed(err, this.readOnly)) throw err;
        this.#replicas.requestFailed(image, err);
        if (performance.now() > deadline) throw this.#givenUp(err);
      }
    }
  }

  #givenUp(err: unknown): ConnectionError {
    return new ConnectionError(
      `no server answered within ${(this.#giveUpAfterMs! / 1000).toFixed(1)} s (last error: ${
        describeError(err)
      })`,
    );
  }

  /** A live session, waiting for a reconnect (up to the deadline) if there is none. */
  async #usable(deadline: number): Promise<Image> {
    const serving = this.#replicas.serving;
    if (serving) return serving;
    const next = this.#replicas.next();
    if (deadline === Infinity) return await next;
    // Past the deadline nobody awaits `next` any more; its later rejection
    // (the attachment closed) must not surface as unhandled.
    next.catch(() => {});
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      return await Promise.race([
        next,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(this.#givenUp(new TimeoutError(this.lastError ?? "still reconnecting"))),
            Math.max(0, deadline - performance.now()),
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }
}
