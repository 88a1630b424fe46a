/**
 * `9nbd export` as a library: listen on TCP or a Unix socket, check each
 * client against the access policy, and serve it on its own
 * {@link Connection}. One client's failure never reaches the others or the
 * listener.
 *
 * @module
 */

import { type Address, formatAddress, listen, P9_PORT, parseListen } from "../address.ts";
import { UsageError } from "../errors.ts";
import { logger } from "../log.ts";
import { IOHDRSZ } from "../p9/wire.ts";
import { type AccessPolicy, type Cidr, isLoopback, parseCidr, refusal } from "./access.ts";
import { type CredentialDecoder, ServerAuth } from "./auth.ts";
import { Connection, MIN_MSIZE } from "./connection.ts";
import { ExportTable } from "./exports.ts";

const log = logger("server");

/** How to run an export server. */
export interface ExportServerOptions {
  /** Image files and directories of image files to serve. */
  paths: string[];
  /** Where to listen (default {@link DEFAULT_EXPORT_ADDRESS}). Port 0 picks a free port. */
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
  /**
   * Require MUNGE authentication of every attach, decoding credentials
   * through this (lib/server/auth.ts has the rules). Left out, none is asked for.
   */
  munge?: CredentialDecoder & { socketPath?: string };
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

/** Where `9nbd export` listens unless told: loopback only, the 9P port. */
export const DEFAULT_EXPORT_ADDRESS: Address = { kind: "tcp", host: "127.0.0.1", port: P9_PORT };

/** `--listen` of the export: the one address grammar (`address.ts`), port 564 by default. */
export function parseListenAddress(text: string): Address {
  return parseListen(text, P9_PORT);
}

/**
 * The start-up warning of an export anyone may use: one listening beyond
 * loopback with neither authentication nor `--allow`; undefined otherwise.
 */
export function exposureWarning(
  address: Address,
  guards: { authenticated: boolean; allowed: boolean; readOnly: boolean },
): string | undefined {
  if (address.kind !== "tcp" || isLoopback(address.host)) return undefined;
  if (guards.authenticated || guards.allowed) return undefined;
  return `${formatAddress(address)} is reachable from other machines, with no ` +
    `authentication (--auth munge) and no --allow: anyone who reaches it may ${
      guards.readOnly ? "read" : "read and write"
    } the images`;
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
  const listener = await listen(options.listen ?? DEFAULT_EXPORT_ADDRESS);
  const address = listener.address;

  const where = formatAddress(address);
  log.info(
    `serving ${options.paths.join(" ")} on ${where} (${readOnly ? "read-only" : "read-write"})`,
  );
  const auth = options.munge ? new ServerAuth(options.munge) : undefined;
  if (options.munge) {
    log.info(
      `every attach must be authenticated with MUNGE (munged at ${
        options.munge.socketPath ?? "its default socket"
      })`,
    );
  }
  const exposed = exposureWarning(address, {
    authenticated: auth !== undefined,
    allowed: policy.allow.length > 0,
    readOnly,
  });
  if (exposed) log.warn(exposed);
  else if (address.kind === "tcp" && policy.allow.length === 0) {
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
      log.debug(`${label}: connected`);
      const connection = new Connection(conn, label, {
        exports,
        readOnly,
        maxMsize,
        maxInflight: options.maxInflight ?? 64,
        maxFids: options.maxFids ?? 1024,
        auth,
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
      await listener.close();
      await accepting;
      const ending = [...live];
      for (const { connection } of ending) connection.close();
      await Promise.all(ending.map((e) => e.done));
    },
  };
}
