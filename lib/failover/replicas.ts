/**
 * Decides which replica serves, and when that changes. This is the one
 * place a failover happens:
 *
 * - At attach, the first replica in the given order that opens and proves
 *   its identity serves.
 * - When the serving session is lost, the replicas after it in order of
 *   preference are tried, wrapping round to the lost one last (it may just
 *   be rebooting), round after round with backoff, forever: whether a caller
 *   waits that long is its own give-up deadline. A session lost soon after
 *   it started (a flap) delays the next round, so a server that accepts
 *   sessions but fails them at once is not hammered.
 * - A candidate serves only after it has proved it holds the attached image
 *   ({@link ReplicaVerifier}) and has replayed the unflushed writes
 *   ({@link WriteLog}).
 * - With failback, a more preferred replica that answers again takes over
 *   from the one serving, one attempt at a time.
 *
 * It also counts what happened (reconnects, failovers, the last error) for
 * `9nbd list`.
 *
 * @module
 */

import { backoffDelayMs, type BackoffPolicy, defaultBackoff } from "../backoff.ts";
import { ConnectionError, describeError, UsageError } from "../errors.ts";
import { Image, type OpenOptions } from "../image.ts";
import { logger } from "../log.ts";
import { formatAddress } from "../address.ts";
import type { Spec } from "../spec.ts";
import { IdentityError, type ReplicaVerifier } from "./identity.ts";
import type { WriteLog } from "./write_log.ts";

const log = logger("failover");

/** A session lost sooner than this after it started counts as a flap (backed off). */
const FLAP_MS = 1000;

/** How replicas are opened, and when the serving one changes. */
export interface ReplicaSetOptions extends OpenOptions {
  /** Move back to a more preferred replica when it answers again. */
  failback?: boolean;
  /** How often to look for a preferred replica when `failback` is on (default 5 s). */
  failbackIntervalMs?: number;
  backoff?: BackoffPolicy;
}

interface Replica {
  spec: Spec;
  label: string;
  /** Last refusal reason, to log a mismatch once rather than every round. */
  refused?: string;
}

/** The replicas of one image and the session serving it. */
export class ReplicaSet {
  /** Sessions re-established on the replica that was serving. */
  reconnects = 0;
  /** Moves to another replica, failbacks included. */
  failovers = 0;
  /** The last loss or refusal, with its ISO time. */
  lastError: string | null = null;
  /** Whether the image is open read-only (as it was at attach, on every replica). */
  readonly readOnly: boolean;
  readonly #replicas: Replica[];
  readonly #options: ReplicaSetOptions;
  readonly #verifier: ReplicaVerifier;
  readonly #writeLog: WriteLog;
  #current: Image | undefined;
  #currentIndex: number;
  #reconnecting: Promise<Image> | undefined;
  #closed = false;
  #failbackTimer: ReturnType<typeof setInterval> | undefined;
  /** A failback attempt is under way. */
  #failingBack = false;
  /** When the current session was installed, and how many sessions in a row failed soon after. */
  #installedAtMs = performance.now();
  #flaps = 0;
  /** Requests that met the failure and are waiting to be re-issued. */
  #reissued = 0;

  private constructor(
    replicas: Replica[],
    options: ReplicaSetOptions,
    verifier: ReplicaVerifier,
    writeLog: WriteLog,
    first: Image,
    index: number,
  ) {
    this.#replicas = replicas;
    this.#options = options;
    this.#verifier = verifier;
    this.#writeLog = writeLog;
    this.#current = first;
    this.#currentIndex = index;
    this.readOnly = first.readOnly;
    if (options.failback && replicas.length > 1) {
      this.#failbackTimer = setInterval(
        () => void this.#tryFailback(),
        options.failbackIntervalMs ?? 5000,
      );
      this.#failbackTimer.unref();
    }
  }

  /**
   * Open the first replica that answers and proves its identity (which
   * `verifier` then keeps). A permanent error (no such image, access
   * refused) on every replica fails at once; so does a replica set where
   * none answers: attaching needs one live server.
   */
  static async open(
    specs: Spec[],
    options: ReplicaSetOptions,
    verifier: ReplicaVerifier,
    writeLog: WriteLog,
  ): Promise<ReplicaSet> {
    if (specs.length === 0) throw new UsageError("no SPEC given");
    if (options.writable && specs.length > 1) {
      throw new UsageError(
        "--rw takes exactly one server: replicas of a writable image would split (no split brain)",
      );
    }
    const replicas: Replica[] = specs.map((spec) => ({
      spec,
      label: formatAddress(spec.address),
    }));
    const errors: unknown[] = [];
    for (let index = 0; index < replicas.length; index++) {
      let image: Image | undefined;
      try {
        image = await Image.open(replicas[index].spec, options);
        await verifier.verify(image, replicas[index].spec);
        const set = new ReplicaSet(replicas, options, verifier, writeLog, image, index);
        for (const [i, err] of errors.entries()) {
          log.warn(`replica ${replicas[i].label} unavailable at attach: ${describeError(err)}`);
        }
        return set;
      } catch (err) {
        await image?.close();
        errors.push(err);
      }
    }
    // Prefer reporting a permanent error (it tells the user what to fix).
    throw errors.find((e) => !(e instanceof ConnectionError)) ?? errors[0];
  }

  /** The server now serving, as logs name it. */
  get server(): string {
    return this.#replicas[this.#currentIndex].label;
  }

  /** True once {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** The serving session while it is alive; undefined once it died or the set was closed. */
  get serving(): Image | undefined {
    const current = this.#current;
    return current && !current.closed && !this.#closed ? current : undefined;
  }

  /**
   * The next session, when {@link serving} has none: declares a dead one
   * lost (which starts the reconnect) and waits for the reconnect, however
   * long it takes. Rejects once the set is closed.
   */
  async next(): Promise<Image> {
    if (this.#closed) throw new ConnectionError("attachment closed");
    const current = this.#current;
    if (current && !current.closed) return current;
    if (current) this.#lost(current, await current.dead);
    const reconnecting = this.#reconnecting;
    if (!reconnecting) throw new ConnectionError("attachment closed");
    return await reconnecting;
  }

  /** A request on `image` failed because of its server: drop the session; the request is re-issued. */
  requestFailed(image: Image, err: unknown): void {
    this.#lost(image, err);
    this.#reissued++;
  }

  /** Stop serving: close the session and stop failing back. */
  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#failbackTimer);
    await this.#current?.close();
    this.#current = undefined;
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
        const replayed = this.#writeLog.length;
        log.warn(
          `session to ${lost} lost (${describeError(reason)}); serving from ${
            this.#replicas[index].label
          } after ${seconds} s; ${this.#reissued} requests re-issued` +
            (replayed ? `, ${replayed} unflushed writes replayed` : ""),
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

  /**
   * Open replica `index`, check it holds our image and replay the unflushed
   * writes on it; undefined if any of that fails (logged).
   */
  async #tryReplica(index: number): Promise<Image | undefined> {
    const replica = this.#replicas[index];
    let image: Image | undefined;
    try {
      image = await Image.open(replica.spec, this.#options);
      await this.#verifier.verify(image, replica.spec);
      // Writes acknowledged but not yet covered by a FLUSH go to the new
      // session before it serves anything, in the order they were made.
      await this.#writeLog.replayOn(image);
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
