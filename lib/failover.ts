/**
 * A block backend that survives its servers: reconnect, per-request retry,
 * verified failover between replicas, and a write log that makes FLUSH mean
 * "durable on the server that holds the data" even across a reconnect.
 *
 * - A request that fails because the session died (reset, closed, timed
 *   out, protocol garbage) is re-issued on the next session, never failed.
 *   By default it waits forever (an NFS hard mount); `giveUpAfterMs` makes
 *   it fail with EIO after that long (soft).
 * - Read-only attachments may name several servers holding the same image,
 *   in order of preference. When the current one fails the next one that
 *   answers and proves it holds the same image takes over; with `failback`
 *   a preferred server that returns takes over again.
 * - Identity: the size and a fingerprint (SHA-256 over sampled blocks) taken
 *   at attach are checked on every new session before it serves a byte; an
 *   optional full SHA-256 is checked on every replica before first use.
 * - Writable attachments have one server. Writes acknowledged since the last
 *   successful FLUSH are kept; a new session replays them before it serves,
 *   so a FLUSH acknowledged to the kernel covers them on that session.
 *
 * @module
 */

import type { BlockBackend } from "./backend.ts";
import { backoffDelayMs, type BackoffPolicy, defaultBackoff } from "./backoff.ts";
import {
  ConnectionError,
  describeError,
  isRetriable,
  P9Error,
  TimeoutError,
  UsageError,
} from "./errors.ts";
import { Image, type OpenOptions } from "./image.ts";
import { logger } from "./log.ts";
import { formatAddress } from "./p9/transport.ts";
import type { Spec } from "./spec.ts";

const log = logger("failover");

/** How a {@link ResilientImage} behaves. */
export interface ResilientOptions extends OpenOptions {
  /** Fail a request with EIO once it has waited this long for a server; default: never. */
  giveUpAfterMs?: number;
  /** Move back to a more preferred replica when it answers again. */
  failback?: boolean;
  /** How often to look for a preferred replica when `failback` is on (default 5 s). */
  failbackIntervalMs?: number;
  /** Expected SHA-256 (hex) of the whole image, checked on every replica before use. */
  sha256?: string;
  backoff?: BackoffPolicy;
}

/** Blocks sampled for the fingerprint, and their size. */
const FINGERPRINT_SAMPLES = 16;
const FINGERPRINT_BLOCK_BYTES = 4096;
/** A session lost sooner than this after it started counts as a flap (backed off). */
const FLAP_MS = 1000;
/** Above this many unflushed bytes, writes trigger a background fsync to bound memory. */
const WRITE_LOG_MAX_BYTES = 64 * 1024 * 1024;

/** What identifies an image regardless of the server holding it. */
export interface Identity {
  sizeBytes: number;
  fingerprint: string;
}

function hex(bytes: ArrayBuffer): string {
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Offsets of the fingerprint's sample blocks: spread evenly, first and last included. */
export function sampleOffsets(sizeBytes: number): number[] {
  const block = Math.min(FINGERPRINT_BLOCK_BYTES, sizeBytes);
  if (block === 0) return [];
  const last = sizeBytes - block;
  const count = Math.min(FINGERPRINT_SAMPLES, Math.floor(sizeBytes / block));
  const offsets = new Set<number>();
  for (let i = 0; i < count; i++) {
    offsets.add(count === 1 ? 0 : Math.floor(last * i / (count - 1)));
  }
  return [...offsets].sort((a, b) => a - b);
}

/** The size and sampled-block fingerprint of an open image. */
export async function identityOf(image: BlockBackend): Promise<Identity> {
  const offsets = sampleOffsets(image.sizeBytes);
  const block = Math.min(FINGERPRINT_BLOCK_BYTES, image.sizeBytes);
  const samples = new Uint8Array(8 + offsets.length * block);
  new DataView(samples.buffer).setBigUint64(0, BigInt(image.sizeBytes));
  await Promise.all(
    offsets.map((offset, i) =>
      image.read(offset, samples.subarray(8 + i * block, 8 + (i + 1) * block))
    ),
  );
  return {
    sizeBytes: image.sizeBytes,
    fingerprint: hex(await crypto.subtle.digest("SHA-256", samples)),
  };
}

/** SHA-256 of the whole image, read in large parallel chunks. */
export async function fullSha256(image: BlockBackend): Promise<string> {
  // Web Crypto has no incremental hash; node:crypto's does.
  const { createHash } = await import("node:crypto");
  const hash = createHash("sha256");
  const chunk = 8 * 1024 * 1024;
  for (let offset = 0; offset < image.sizeBytes; offset += chunk) {
    const buffer = new Uint8Array(Math.min(chunk, image.sizeBytes - offset));
    await image.read(offset, buffer);
    hash.update(buffer);
  }
  return hash.digest("hex");
}

/** Is `err` a sign that this server (not the request) is the problem? */
function serverFailed(err: unknown, readOnly: boolean): boolean {
  // A read-only replica that answers reads with errors (image removed, I/O
  // error on its disk) is failing; another replica may serve. A writable
  // image's Rlerror (ENOSPC, EIO) is the answer and goes to the kernel.
  return isRetriable(err) || (readOnly && err instanceof P9Error);
}

interface Replica {
  spec: Spec;
  label: string;
  /** Full-hash check done (or not asked for). */
  verifiedFull: boolean;
  /** Last refusal reason, to log a mismatch once rather than every round. */
  refused?: string;
}

interface LoggedWrite {
  offset: number;
  data: Uint8Array;
}

/** A {@link BlockBackend} over one or more replicas of an image. */
export class ResilientImage implements BlockBackend {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  reconnects = 0;
  failovers = 0;
  lastError: string | null = null;
  readonly #replicas: Replica[];
  readonly #options: ResilientOptions;
  readonly #identity: Identity;
  #current: Image | undefined;
  #currentIndex: number;
  #reconnecting: Promise<Image> | undefined;
  #closed = false;
  #failbackTimer: ReturnType<typeof setInterval> | undefined;
  /** A failback attempt is under way. */
  #failingBack = false;
  #unflushed: LoggedWrite[] = [];
  #unflushedBytes = 0;
  #backgroundFlush: Promise<void> | undefined;
  /** When the current session was installed, and how many sessions in a row failed soon after. */
  #installedAtMs = performance.now();
  #flaps = 0;
  /** Requests that met the failure and are waiting to be re-issued. */
  #reissued = 0;

  private constructor(
    replicas: Replica[],
    options: ResilientOptions,
    first: Image,
    index: number,
    identity: Identity,
  ) {
    this.#replicas = replicas;
    this.#options = options;
    this.#current = first;
    this.#currentIndex = index;
    this.#identity = identity;
    this.sizeBytes = identity.sizeBytes;
    this.readOnly = first.readOnly;
    if (options.failback && replicas.length > 1) {
      this.#failbackTimer = setInterval(
        () => void this.#tryFailback(),
        options.failbackIntervalMs ?? 5000,
      );
      this.#failbackTimer.unref();
    }
  }

  /** The server now serving, as logs name it. */
  get server(): string {
    return this.#replicas[this.#currentIndex].label;
  }

  /** The identity every replica must match. */
  get identity(): Identity {
    return this.#identity;
  }

  /**
   * Open the first replica that answers. A permanent error (no such image,
   * access refused) on every replica fails at once; so does a replica set
   * where none answers: attaching needs one live server.
   */
  static async open(specs: Spec[], options: ResilientOptions = {}): Promise<ResilientImage> {
    if (specs.length === 0) throw new UsageError("no SPEC given");
    if (options.writable && specs.length > 1) {
      throw new UsageError(
        "--rw takes exactly one server: replicas of a writable image would split (no split brain)",
      );
    }
    const replicas: Replica[] = specs.map((spec) => ({
      spec,
      label: formatAddress(spec.address),
      verifiedFull: options.sha256 === undefined,
    }));
    const errors: unknown[] = [];
    for (let index = 0; index < replicas.length; index++) {
      let image: Image | undefined;
      try {
        image = await Image.open(replicas[index].spec, options);
        const identity = await identityOf(image);
        if (options.sha256) {
          const sha = await fullSha256(image);
          if (sha !== options.sha256.toLowerCase()) {
            throw new P9Error(
              5,
              `verify ${replicas[index].spec.text}: SHA-256 is ${sha}, not ${options.sha256}`,
            );
          }
          replicas[index].verifiedFull = true;
        }
        const resilient = new ResilientImage(replicas, options, image, index, identity);
        for (const [i, err] of errors.entries()) {
          log.warn(`replica ${replicas[i].label} unavailable at attach: ${describeError(err)}`);
        }
        return resilient;
      } catch (err) {
        await image?.close();
        errors.push(err);
      }
    }
    // Prefer reporting a permanent error (it tells the user what to fix).
    throw errors.find((e) => !(e instanceof ConnectionError)) ?? errors[0];
  }

  async read(offset: number, dest: Uint8Array): Promise<void> {
    await this.#withServer((image) => image.read(offset, dest));
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    await this.#withServer((image) => image.write(offset, data));
    // Keep a copy until a FLUSH covers it: the caller reuses its buffer.
    this.#unflushed.push({ offset, data: data.slice() });
    this.#unflushedBytes += data.length;
    if (this.#unflushedBytes > WRITE_LOG_MAX_BYTES && !this.#backgroundFlush) {
      this.#backgroundFlush = this.flush().catch(() => {}).finally(() => {
        this.#backgroundFlush = undefined;
      });
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    const covered = this.#unflushed.length;
    // Replays on reconnect happen before a session is handed out, so a
    // successful fsync here covers every logged write up to `covered`.
    await this.#withServer((image) => image.flush());
    this.#unflushedBytes -= this.#unflushed.slice(0, covered).reduce(
      (n, w) => n + w.data.length,
      0,
    );
    this.#unflushed = this.#unflushed.slice(covered);
  }

  /** Stop serving: close the session and any background work. */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#failbackTimer);
    await this.#current?.close();
    this.#current = undefined;
  }

  /**
   * Run `operation` on a live, verified session, retrying on the next
   * session whenever the server fails, until it succeeds, fails for a
   * reason of its own, or the give-up deadline passes.
   */
  async #withServer(operation: (image: Image) => Promise<void>): Promise<void> {
    const deadline = this.#options.giveUpAfterMs === undefined
      ? Infinity
      : performance.now() + this.#options.giveUpAfterMs;
    while (true) {
      const image = await this.#usable(deadline);
      try {
        await operation(image);
        return;
      } catch (err) {
        if (this.#closed || !serverFailed(err, this.readOnly)) throw err;
        this.#lost(image, err);
        this.#reissued++;
        if (performance.now() > deadline) throw this.#givenUp(err);
      }
    }
  }

  #givenUp(err: unknown): ConnectionError {
    return new ConnectionError(
      `no server answered within ${
        (this.#options.giveUpAfterMs! / 1000).toFixed(1)
      } s (last error: ${describeError(err)})`,
    );
  }

  /** A live session, waiting for a reconnect if there is none. */
  async #usable(deadline: number): Promise<Image> {
    if (this.#closed) throw new ConnectionError("attachment closed");
    const current = this.#current;
    if (current && !current.closed) return current;
    if (current) this.#lost(current, await current.dead);
    const reconnecting = this.#reconnecting;
    if (!reconnecting) throw new ConnectionError("attachment closed");
    if (deadline === Infinity) return await reconnecting;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      return await Promise.race([
        reconnecting,
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

  /** `image` failed with `err`: drop it and start (one) reconnect. */
  #lost(image: Image, err: unknown): void {
    if (this.#current !== image) return; // Already replaced.
    // A server that accepts sessions but fails them at once must not be
    // hammered in a tight loop: count quick losses and back off on them.
    this.#flaps = performance.now() - this.#installedAtMs < FLAP_MS ? this.#flaps + 1 : 0;
    this.#current = undefined;
    for (const session of image.sessions) session.close("server failed");
    const text = describeError(err);
    this.lastError = `${new Date().toISOString()} ${
      text.startsWith("server ") ? text : `server ${image.server}: ${text}`
    }`;
    this.#reconnecting = this.#reconnect(this.#currentIndex, err, performance.now());
    this.#reconnecting.catch(() => {});
  }

  /** Find the next replica that opens and proves its identity; forever, with backoff. */
  async #reconnect(failedIndex: number, reason: unknown, startMs: number): Promise<Image> {
    const lost = this.#replicas[failedIndex].label;
    log.warn(`session to ${lost} lost (${describeError(reason)}); reconnecting`);
    const count = this.#replicas.length;
    // The next replicas in order of preference after the one that failed,
    // wrapping round to it last (it may just be rebooting).
    const order = Array.from({ length: count }, (_, i) => (failedIndex + 1 + i) % count);
    if (this.#flaps > 0) {
      await new Promise((r) =>
        setTimeout(r, backoffDelayMs(this.#flaps - 1, this.#options.backoff ?? defaultBackoff))
      );
    }
    for (let attempt = 0;; attempt++) {
      for (const index of order) {
        if (this.#closed) throw new ConnectionError("attachment closed");
        const image = await this.#tryReplica(index);
        if (!image) continue;
        if (this.#closed) {
          await image.close();
          throw new ConnectionError("attachment closed");
        }
        this.#install(image, index);
        const seconds = ((performance.now() - startMs) / 1000).toFixed(2);
        if (index !== failedIndex) this.failovers++;
        else this.reconnects++;
        log.warn(
          `session to ${lost} lost (${describeError(reason)}); serving from ${
            this.#replicas[index].label
          } after ${seconds} s; ${this.#reissued} requests re-issued` +
            (this.#unflushed.length ? `, ${this.#unflushed.length} unflushed writes replayed` : ""),
        );
        this.#reissued = 0;
        return image;
      }
      await new Promise((r) =>
        setTimeout(r, backoffDelayMs(attempt, this.#options.backoff ?? defaultBackoff))
      );
    }
  }

  #install(image: Image, index: number): void {
    this.#installedAtMs = performance.now();
    this.#current = image;
    this.#currentIndex = index;
    this.#reconnecting = undefined;
  }

  /** Open replica `index` and check it holds our image; undefined if not (logged). */
  async #tryReplica(index: number): Promise<Image | undefined> {
    const replica = this.#replicas[index];
    let image: Image | undefined;
    try {
      image = await Image.open(replica.spec, this.#options);
      const identity = await identityOf(image);
      if (identity.sizeBytes !== this.#identity.sizeBytes) {
        throw new IdentityError(
          `holds ${identity.sizeBytes} bytes, not ${this.#identity.sizeBytes}: a different image`,
        );
      }
      // A writable image's content is ours to change (one server, no
      // replicas), so only its size identifies it.
      if (this.readOnly && identity.fingerprint !== this.#identity.fingerprint) {
        throw new IdentityError("content fingerprint differs: a different image");
      }
      if (!replica.verifiedFull) {
        const sha = await fullSha256(image);
        if (sha !== this.#options.sha256!.toLowerCase()) {
          throw new IdentityError(`SHA-256 is ${sha}, not ${this.#options.sha256}`);
        }
        replica.verifiedFull = true;
      }
      // Writes acknowledged but not yet covered by a FLUSH go to the new
      // session before it serves anything, in the order they were made.
      for (const write of this.#unflushed) await image.write(write.offset, write.data);
      if (replica.refused) log.info(`replica ${replica.label} is usable again`);
      replica.refused = undefined;
      return image;
    } catch (err) {
      await image?.close();
      const why = describeError(err);
      if (err instanceof IdentityError) {
        if (replica.refused !== why) log.error(`replica ${replica.label} refused: ${why}`);
        replica.refused = why;
      } else {
        log.debug(`replica ${replica.label}: ${why}`);
      }
      this.lastError = `${new Date().toISOString()} ${why}`;
      return undefined;
    }
  }

  /**
   * With failback on: if a more preferred replica answers, move to it. One
   * attempt at a time: a replica slow to answer (up to the timeout) must not
   * collect a new session every interval.
   */
  async #tryFailback(): Promise<void> {
    if (this.#failingBack) return;
    this.#failingBack = true;
    try {
      await this.#failBackOnce();
    } finally {
      this.#failingBack = false;
    }
  }

  async #failBackOnce(): Promise<void> {
    if (this.#closed || this.#reconnecting || this.#currentIndex === 0) return;
    for (let index = 0; index < this.#currentIndex; index++) {
      const image = await this.#tryReplica(index);
      if (!image) continue;
      // While we waited, a reconnect may have moved us (even to this replica).
      if (this.#closed || this.#reconnecting || !this.#current || index >= this.#currentIndex) {
        await image.close();
        return;
      }
      const old = this.#current;
      const from = old.server;
      this.#install(image, index);
      this.failovers++;
      log.warn(`failing back from ${from} to ${image.server}`);
      // Let requests already sent to the old server finish there.
      const drain = setInterval(() => {
        if (old.inflight === 0 || old.closed) {
          clearInterval(drain);
          void old.close();
        }
      }, 100);
      return;
    }
  }
}

/** A replica holds a different image. */
class IdentityError extends Error {
  override name = "IdentityError";
}
