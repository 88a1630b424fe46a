/**
 * A 9P server for failover tests that serves an image file well until told
 * to misbehave: it can be armed to answer the next read (or write) with
 * garbage, an unknown tag, the wrong message type, a frame cut in the middle
 * followed by a hang-up, an Rlerror carrying an absurd errno, an oversized
 * Rread, or nothing at all. It can also crash (stop listening and hang up on
 * every client, forgetting writes not yet covered by Tfsync when writes are
 * volatile, as a rebooting server loses its page cache), come back on the
 * same socket path, and hold new sessions' Tversion until released.
 *
 * It listens on a Unix socket so that `Image.open` (and so ResilientImage)
 * dials it like any server; every connection is a {@link Fake9pServer}
 * running {@link imageFileScript} behind the hostility switch.
 *
 * @module
 */

import { type Message, MsgType } from "../../../lib/p9/wire.ts";
import { encode } from "../../../lib/p9/wire.ts";
import {
  Fake9pServer,
  type FileServerOptions,
  imageFileScript,
  type Request,
  type Script,
} from "./fake_9p_server.ts";
import { randomBytes } from "../../../tools/random.ts";

/** The ways a {@link HostileImageServer} can answer a request it was armed for. */
export const HOSTILITIES = [
  "garbage",
  "unknown-type",
  "unknown-tag",
  "wrong-type",
  "cut-frame",
  "absurd-errno",
  "oversized-read",
  "eio",
  "silent",
] as const;

/** One way of misbehaving; see {@link HOSTILITIES}. */
export type Hostility = typeof HOSTILITIES[number];

/** What {@link HostileImageServer.arm} aims at. */
export interface ArmOptions {
  /** Which request type triggers it (default Tread). */
  on?: Message["type"];
  /** How many requests get it (default 1; Infinity: every one from now on). */
  times?: number;
  /** Only requests this accepts count (default: all of type `on`). */
  when?: (request: Request) => boolean;
}

/** How a {@link HostileImageServer} serves. */
export interface HostileServerOptions extends FileServerOptions {
  /**
   * Keep writes in memory until Tfsync; {@link HostileImageServer.crash}
   * forgets the ones not yet synced (default false: every write is durable).
   */
  volatileWrites?: boolean;
}

/** A misbehaving-on-demand image server on a Unix socket. See the module doc. */
export class HostileImageServer {
  /** Every connection accepted, in order (including those of earlier lives). */
  readonly connections: Fake9pServer[] = [];
  /** Hostile answers actually sent, in order. */
  readonly sent: Hostility[] = [];
  /** Tversion requests held while {@link holdSessions} is set. */
  readonly #heldVersions: { request: Request; server: Fake9pServer }[] = [];
  /** When set, a new session's Tversion waits for {@link releaseSessions}. */
  holdSessions = false;
  readonly #dir: string;
  readonly #working: Uint8Array;
  readonly #durable: Uint8Array;
  readonly #script: Script;
  readonly #volatile: boolean;
  #listener: Deno.Listener | undefined;
  #accepting: Promise<void> | undefined;
  #armed:
    | { hostility: Hostility; on: number; left: number; when?: (request: Request) => boolean }
    | undefined;

  private constructor(dir: string, file: Uint8Array, options: HostileServerOptions) {
    this.#dir = dir;
    this.#working = file;
    this.#durable = file.slice();
    this.#volatile = options.volatileWrites ?? false;
    this.#script = imageFileScript(file, options);
  }

  /**
   * Serve `file` (written in place by Twrite) on a fresh socket. The image's
   * SPEC is {@link spec}.
   */
  static async start(
    file: Uint8Array,
    options: HostileServerOptions = {},
  ): Promise<HostileImageServer> {
    const dir = await Deno.makeTempDir({ prefix: "9nbd-hostile-" });
    const server = new HostileImageServer(dir, file, options);
    server.up();
    return server;
  }

  /** The socket path. */
  get path(): string {
    return `${this.#dir}/9p.sock`;
  }

  /** A SPEC naming the image on this server. */
  get spec(): string {
    return `unix:${this.path}:/img`;
  }

  /** The bytes a client would read now (unsynced writes included). */
  get file(): Uint8Array {
    return this.#working;
  }

  /** True while listening. */
  get listening(): boolean {
    return this.#listener !== undefined;
  }

  /** Requests of `type` received on every connection so far. */
  requestsOf<T extends Message["type"]>(type: T): (Request & { msg: Message<T> })[] {
    return this.connections.flatMap((c) => c.requestsOf(type));
  }

  /** Answer the next `times` requests of type `on` with `hostility`. */
  arm(hostility: Hostility, options: ArmOptions = {}): void {
    this.#armed = {
      hostility,
      on: options.on ?? MsgType.Tread,
      left: options.times ?? 1,
      when: options.when,
    };
  }

  /** Behave again. */
  disarm(): void {
    this.#armed = undefined;
  }

  /** Answer every Tversion held by {@link holdSessions} (and stop holding). */
  releaseSessions(): void {
    this.holdSessions = false;
    for (const { request, server } of this.#heldVersions.splice(0)) {
      void this.#script(request, server);
    }
  }

  /** Listen on the socket path (again). */
  up(): void {
    if (this.#listener) return;
    try {
      Deno.removeSync(this.path);
    } catch {
      // No stale socket from an earlier life.
    }
    const listener = Deno.listen({ transport: "unix", path: this.path });
    this.#listener = listener;
    this.#accepting = (async () => {
      try {
        for await (const conn of listener) {
          this.connections.push(new Fake9pServer(conn, (r, s) => this.#serve(r, s)));
        }
      } catch {
        // Listener closed.
      }
    })();
  }

  /**
   * Crash: stop listening (connects now fail) and hang up on every client.
   * With volatile writes, everything written since the last Tfsync is lost.
   */
  async crash(): Promise<void> {
    const listener = this.#listener;
    this.#listener = undefined;
    listener?.close();
    await this.#accepting;
    for (const connection of this.connections) connection.disconnect();
    await Promise.all(this.connections.map((c) => c.done));
    this.#heldVersions.length = 0;
    if (this.#volatile) this.#working.set(this.#durable);
    try {
      Deno.removeSync(this.path);
    } catch {
      // Already gone.
    }
  }

  /** Crash for good and remove the socket's directory. */
  async close(): Promise<void> {
    await this.crash();
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }

  #serve(request: Request, server: Fake9pServer): void | Promise<void> {
    const msg = request.msg;
    if (msg.type === MsgType.Tversion && this.holdSessions) {
      this.#heldVersions.push({ request, server });
      return;
    }
    const armed = this.#armed;
    if (armed && armed.left > 0 && msg.type === armed.on && (armed.when?.(request) ?? true)) {
      armed.left--;
      if (armed.left === 0) this.#armed = undefined;
      this.sent.push(armed.hostility);
      return this.#misbehave(armed.hostility, request, server);
    }
    // Only a Tfsync actually answered makes the writes before it durable.
    if (msg.type === MsgType.Tfsync && this.#volatile) this.#durable.set(this.#working);
    return this.#script(request, server);
  }

  async #misbehave(hostility: Hostility, request: Request, server: Fake9pServer): Promise<void> {
    const { tag } = request;
    const count = request.msg.type === MsgType.Tread ? request.msg.count : 1;
    switch (hostility) {
      case "garbage":
        // Random bytes: the first four are an absurd frame size.
        await server.sendRaw(randomBytes(256, tag + 1));
        return;
      case "unknown-type": {
        // A well-sized frame of a type 9P does not define.
        const frame = randomBytes(32, tag + 7);
        new DataView(frame.buffer).setUint32(0, frame.length, true);
        frame[4] = 250;
        frame[5] = tag & 0xff;
        frame[6] = tag >> 8;
        await server.sendRaw(frame);
        return;
      }
      case "unknown-tag":
        await server.reply((tag + 1000) % 0xffff, {
          type: MsgType.Rread,
          data: new Uint8Array(Math.min(count, 512)),
        });
        return;
      case "wrong-type":
        await server.reply(tag, { type: MsgType.Rclunk });
        return;
      case "cut-frame": {
        const frame = encode(tag, { type: MsgType.Rread, data: randomBytes(count, tag) });
        await server.sendRaw(frame.subarray(0, Math.max(5, frame.length >> 1)));
        server.disconnect();
        return;
      }
      case "absurd-errno":
        await server.reply(tag, { type: MsgType.Rlerror, ecode: 0x7fff_ffff });
        return;
      case "oversized-read":
        await server.reply(tag, { type: MsgType.Rread, data: randomBytes(count + 1, tag) });
        return;
      case "eio":
        await server.reply(tag, { type: MsgType.Rlerror, ecode: 5 });
        return;
      case "silent":
        return; // Never answered: only the client's timeout ends this.
    }
  }
}
