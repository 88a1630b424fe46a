/**
 * An NBD server over one {@link BlockBackend}: listens on a Unix or TCP
 * socket, runs the fixed-newstyle handshake ({@link negotiate}, decisions in
 * `handshake.ts`) on each connection, then hands the connection to its own
 * {@link NbdEngine}. Every connection shares the one backend, which is why
 * CAN_MULTI_CONN is advertised: a write acknowledged on one connection is
 * visible to reads on every other, and a FLUSH on any covers them all.
 *
 * A connection that breaks the handshake (bad magic, an oversized option,
 * unknown client flags, EOF, no progress within the handshake timeout) is
 * dropped; the others carry on.
 *
 * @module
 */

import {
  type Address,
  formatAddress,
  listen,
  type Listening,
  NBD_PORT,
  parseListen,
} from "../address.ts";
import type { BlockBackend } from "../backend.ts";
import { describeError } from "../errors.ts";
import { BufferedReader, writeAll } from "../io.ts";
import { logger } from "../log.ts";
import { type ByteStream, MAX_REQUEST_BYTES, NbdEngine, transmissionFlags } from "./engine.ts";
import {
  answerOption,
  CLIENT_FLAGS_BYTES,
  ClientFlag,
  decodeClientFlags,
  decodeOptionHeader,
  encodeGreeting,
  type ExportDescription,
  NbdOption,
  OPTION_HEADER_BYTES,
  optionName,
} from "./handshake.ts";

const log = logger("proxy");

/** `--listen` of the proxy: the one address grammar (`address.ts`), port 10809 by default. */
export function parseListenAddress(text: string): Address {
  return parseListen(text, NBD_PORT);
}

/** What the handshake ended in. */
export type HandshakeResult = "transmission" | "closed";

/** Options of {@link negotiate}. */
export interface NegotiateOptions {
  /** Told why a connection ended during the handshake, or an option failed. */
  onNote?: (note: string) => void;
}

/**
 * Run the server side of the handshake on `stream`. Resolves with
 * `"transmission"` once the client chose the export (the stream is then
 * positioned at the first request: nothing past the handshake has been
 * read, as the reader is unbuffered) or `"closed"` when the client aborted
 * or left, or asked for something that ends the session. Rejects with
 * {@link ProtocolError} when the client broke the protocol; the caller
 * drops the connection. Never closes the stream itself.
 */
export async function negotiate(
  stream: ByteStream,
  exported: ExportDescription,
  options: NegotiateOptions = {},
): Promise<HandshakeResult> {
  // Capacity 0: the engine takes the stream over afterwards, so nothing may be read ahead.
  const reader = new BufferedReader(stream, 0);
  // EOF, even mid-message, is "closed": a half message from a departing client is moot.
  const readExactly = async (dest: Uint8Array) => await reader.readFull(dest) === dest.length;
  await writeAll(stream, encodeGreeting());
  const flagBytes = new Uint8Array(CLIENT_FLAGS_BYTES);
  if (!await readExactly(flagBytes)) return "closed";
  const clientFlags = decodeClientFlags(flagBytes);
  const fixed = (clientFlags & ClientFlag.fixedNewstyle) !== 0;
  const header = new Uint8Array(OPTION_HEADER_BYTES);
  for (;;) {
    if (!await readExactly(header)) return "closed";
    const { option, length } = decodeOptionHeader(header);
    const data = new Uint8Array(length);
    if (!await readExactly(data)) return "closed";
    if (!fixed && option !== NbdOption.exportName) {
      // Plain newstyle has no option replies: the only thing to do is close.
      options.onNote?.(`${optionName(option)} from a client without fixed newstyle`);
      return "closed";
    }
    const answer = answerOption(option, data, exported, clientFlags);
    if (answer.note) options.onNote?.(answer.note);
    for (const bytes of answer.reply) await writeAll(stream, bytes);
    if (answer.next === "transmission") return "transmission";
    if (answer.next === "close") return "closed";
  }
}

/** Options of {@link NbdProxy}. */
export interface NbdProxyOptions {
  backend: BlockBackend;
  listen: Address;
  /** Export name; empty or absent: any name the client asks for (and the default) is this export. */
  name?: string;
  /** Text for NBD_INFO_DESCRIPTION and NBD_OPT_LIST. */
  description?: string;
  /** NBD requests served at once per connection (the engine's window). */
  maxInflight?: number;
  /** Drop a client that has not finished the handshake in this long (default 30 s). */
  handshakeTimeoutMs?: number;
}

/** Counters of a running proxy. */
export interface ProxyStats {
  /** Connections accepted since start. */
  accepted: number;
  /** Connections now in the transmission phase. */
  serving: number;
  /** Connections dropped for breaking the protocol (handshake or transmission). */
  dropped: number;
}

/**
 * A listening NBD server. {@link NbdProxy.listen} binds the socket; the
 * accept loop runs until {@link NbdProxy.close}.
 */
export class NbdProxy {
  readonly address: Address;
  readonly stats: ProxyStats = { accepted: 0, serving: 0, dropped: 0 };
  readonly #listener: Listening;
  readonly #options: NbdProxyOptions;
  readonly #exported: ExportDescription;
  readonly #connections = new Set<{ conn: Deno.Conn; engine?: NbdEngine }>();
  readonly #tasks = new Set<Promise<void>>();
  readonly #accepting: Promise<void>;
  #closed = false;

  private constructor(listener: Listening, options: NbdProxyOptions) {
    this.#listener = listener;
    this.address = listener.address;
    this.#options = options;
    const backend = options.backend;
    this.#exported = {
      name: options.name ?? "",
      description: options.description,
      sizeBytes: backend.sizeBytes,
      transmissionFlags: transmissionFlags(backend, { canMultiConn: true }),
      blockSize: {
        minimumBytes: 1,
        preferredBytes: 4096,
        maximumPayloadBytes: MAX_REQUEST_BYTES,
      },
    };
    this.#accepting = this.#acceptLoop();
  }

  /** What clients are told about the export. */
  get exported(): ExportDescription {
    return this.#exported;
  }

  /**
   * Bind the listening socket and start accepting. A Unix socket path left
   * behind by a previous run is replaced; any other file there is an error.
   * A TCP port 0 binds a free port (see {@link address}).
   */
  static async listen(options: NbdProxyOptions): Promise<NbdProxy> {
    return new NbdProxy(await listen(options.listen), options);
  }

  /** Stop accepting, end every connection (requests in flight settle first), remove the socket. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#listener.close();
    for (const entry of this.#connections) {
      if (entry.engine) entry.engine.stop();
      else closeQuietly(entry.conn);
    }
    await this.#accepting;
    await Promise.allSettled([...this.#tasks]);
  }

  async #acceptLoop(): Promise<void> {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch (err) {
        if (this.#closed) return;
        log.error(`accept on ${formatAddress(this.address)}: ${describeError(err)}`);
        // A transient failure (EMFILE): do not spin.
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      if (this.#closed) {
        closeQuietly(conn);
        return;
      }
      this.stats.accepted++;
      const task = this.#serveConnection(conn);
      this.#tasks.add(task);
      void task.finally(() => this.#tasks.delete(task));
    }
  }

  /** Handshake, then the transmission phase; never rejects. */
  async #serveConnection(conn: Deno.Conn): Promise<void> {
    const peer = conn.remoteAddr.transport === "unix"
      ? `connection ${this.stats.accepted}`
      : `${(conn.remoteAddr as Deno.NetAddr).hostname}:${(conn.remoteAddr as Deno.NetAddr).port}`;
    const entry: { conn: Deno.Conn; engine?: NbdEngine } = { conn };
    this.#connections.add(entry);
    const timeoutMs = this.#options.handshakeTimeoutMs ?? 30_000;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      closeQuietly(conn);
    }, timeoutMs);
    try {
      let result: HandshakeResult;
      try {
        result = await negotiate(conn, this.#exported, {
          onNote: (note) => log.debug(`${peer}: ${note}`),
        });
      } catch (err) {
        if (!this.#closed) {
          if (timedOut) log.warn(`${peer}: no handshake in ${timeoutMs / 1000} s; dropped`);
          else {
            this.stats.dropped++;
            log.warn(`${peer}: handshake failed: ${describeError(err)}; dropped`);
          }
        }
        closeQuietly(conn);
        return;
      } finally {
        clearTimeout(timer);
      }
      if (result === "closed" || this.#closed) {
        closeQuietly(conn);
        return;
      }
      log.debug(`${peer}: transmission phase`);
      const engine = new NbdEngine(conn, this.#options.backend, {
        maxInflight: this.#options.maxInflight,
        onRequestError: (err, request) =>
          log.warn(`${peer}: request ${request.type} at ${request.offset}: ${describeError(err)}`),
      });
      entry.engine = engine;
      this.stats.serving++;
      try {
        await engine.serve();
        log.debug(`${peer}: disconnected`);
      } catch (err) {
        this.stats.dropped++;
        log.warn(`${peer}: ${describeError(err)}; dropped`);
      } finally {
        this.stats.serving--;
      }
    } finally {
      this.#connections.delete(entry);
    }
  }
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
