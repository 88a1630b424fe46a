/**
 * `9nbd export` as a library: listen on TCP or a Unix socket, check each
 * client against the access policy, and serve it on its own
 * {@link Connection}. One client's failure never reaches the others or the
 * listener.
 *
 * @module
 */

import { UsageError } from "../errors.ts";
import { logger } from "../log.ts";
import { type Address, DEFAULT_PORT, formatAddress } from "../p9/transport.ts";
import { IOHDRSZ } from "../p9/wire.ts";
import { type AccessPolicy, type Cidr, parseCidr, refusal } from "./access.ts";
import { Connection, MIN_MSIZE } from "./connection.ts";
import { ExportTable } from "./exports.ts";

const log = logger("server");

/** How to run an export server. */
export interface ExportServerOptions {
  /** Image files and directories of image files to serve. */
  paths: string[];
  /** Where to listen (default 127.0.0.1:564). Port 0 picks a free port. */
  listen?: Address;
  /** Allow Twrite and Tlopen for writing (default read-only). */
  readWrite?: boolean;
  /** Address ranges allowed to connect (`10.0.0.0/8`, `fd00::/8`); empty: everyone. */
  allow?: (string | Cidr)[];
  /** Only accept TCP clients whose source port is below 1024. */
  privilegedPortOnly?: boolean;
  /** Largest msize to grant (default 1 MiB + 24). */
  maxMsize?: number;
  /** Requests in flight per connection (default 64). */
  maxInflight?: number;
  /** Fids per connection (default 1024). */
  maxFids?: number;
}

/** A running export server. */
export interface ExportServer {
  /** Where it listens (with the real port when 0 was asked for). */
  address: Address;
  /** Clients connected now. */
  readonly connections: number;
  /** Stop listening, drop every client, and wait for them to end. */
  close(): Promise<void>;
}

/** `HOST:PORT`, `[IPV6]:PORT`, `unix:PATH`, `HOST` or `:PORT` → an address. */
export function parseListenAddress(text: string): Address {
  if (text.startsWith("unix:")) {
    const path = text.slice("unix:".length);
    if (path === "") throw new UsageError(`--listen: "${text}" has no socket path`);
    return { kind: "unix", path };
  }
  let host: string;
  let portText: string | undefined;
  const bracketed = /^\[([0-9A-Fa-f:.%a-zA-Z0-9_-]+)\](?::([0-9]+))?$/.exec(text);
  if (bracketed) {
    [, host, portText] = bracketed;
  } else if ((text.match(/:/g) ?? []).length > 1) {
    throw new UsageError(`--listen: write IPv6 addresses in brackets, as in [::1]:564`);
  } else {
    const colon = text.lastIndexOf(":");
    host = colon < 0 ? text : text.slice(0, colon);
    portText = colon < 0 ? undefined : text.slice(colon + 1);
  }
  if (host === "") host = "0.0.0.0";
  const port = portText === undefined ? DEFAULT_PORT : Number(portText);
  if (portText !== undefined && (!/^[0-9]{1,5}$/.test(portText) || port > 65535)) {
    throw new UsageError(`--listen: "${text}" has no valid port (0..65535)`);
  }
  return { kind: "tcp", host, port };
}

/** Start serving; resolves once the listener is bound. */
export async function startExportServer(options: ExportServerOptions): Promise<ExportServer> {
  if (options.paths.length === 0) throw new UsageError("nothing to export");
  const exports = await ExportTable.create(options.paths);
  const maxMsize = options.maxMsize ?? (1 << 20) + IOHDRSZ;
  if (maxMsize < MIN_MSIZE) throw new UsageError(`msize ${maxMsize} is below ${MIN_MSIZE}`);
  const policy: AccessPolicy = {
    allow: (options.allow ?? []).map((c) => typeof c === "string" ? parseCidr(c) : c),
    privilegedPortOnly: options.privilegedPortOnly ?? false,
  };
  const readOnly = !(options.readWrite ?? false);
  const requested = options.listen ?? { kind: "tcp", host: "127.0.0.1", port: DEFAULT_PORT };
  const listener = requested.kind === "unix"
    ? Deno.listen({ transport: "unix", path: requested.path })
    : Deno.listen({ transport: "tcp", hostname: requested.host, port: requested.port });
  const address: Address = requested.kind === "unix"
    ? requested
    : { kind: "tcp", host: requested.host, port: (listener.addr as Deno.NetAddr).port };

  const where = formatAddress(address);
  log.info(
    `serving ${options.paths.join(" ")} on ${where} (${readOnly ? "read-only" : "read-write"})`,
  );
  if (address.kind === "tcp" && policy.allow.length === 0) {
    log.info("no --allow given: every client address may connect");
  }

  const live = new Set<{ connection: Connection; done: Promise<void> }>();
  let closing = false;
  const accepting = (async () => {
    while (!closing) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (err) {
        if (closing || err instanceof Deno.errors.BadResource) break;
        log.warn(`accept failed: ${(err as Error).message}`);
        continue;
      }
      const peer = conn.remoteAddr.transport === "unix" ? {} : {
        host: (conn.remoteAddr as Deno.NetAddr).hostname,
        port: (conn.remoteAddr as Deno.NetAddr).port,
      };
      const label = peer.host === undefined
        ? `unix client`
        : formatAddress({ kind: "tcp", host: peer.host, port: peer.port! });
      const why = refusal(policy, peer);
      if (why !== null) {
        log.warn(`refused ${label}: ${why}`);
        conn.close();
        continue;
      }
      if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
      log.debug(`${label}: connected`);
      const connection = new Connection(conn, label, {
        exports,
        readOnly,
        maxMsize,
        maxInflight: options.maxInflight ?? 64,
        maxFids: options.maxFids ?? 1024,
      });
      const entry = { connection, done: connection.run() };
      live.add(entry);
      entry.done.finally(() => live.delete(entry));
    }
  })();

  return {
    address,
    get connections() {
      return live.size;
    },
    async close() {
      if (closing) return;
      closing = true;
      try {
        listener.close();
      } catch {
        // Already closed.
      }
      await accepting;
      const ending = [...live];
      for (const { connection } of ending) connection.close();
      await Promise.all(ending.map((e) => e.done));
      if (address.kind === "unix") await Deno.remove(address.path).catch(() => {});
    },
  };
}
