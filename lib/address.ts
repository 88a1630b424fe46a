/**
 * Where a server is: the one address grammar of 9nbd, used alike by a SPEC's
 * server (`9nbd attach host:/srv/img`), `9nbd export --listen` and
 * `9nbd proxy --listen`, with one parser, one formatter, and the one place
 * that dials and listens for each kind of address.
 *
 * ```text
 * ADDRESS = HOST [":" PORT]           a host name or IPv4 address
 *         | "[" IPV6 "]" [":" PORT]   an IPv6 address, always in brackets (zone allowed)
 *         | ":" PORT                  when listening only: every IPv4 address
 *         | "unix:" SOCKET            a Unix socket path: absolute, or starting with ./ or ../
 * PORT    = 1 to 65535; left out, the protocol's own: 564 for 9P (a SPEC,
 *           export --listen), 10809 for NBD (proxy --listen)
 * SPEC    = ADDRESS ":" PATH          (spec.ts) the address ends at the first ":/"
 * ```
 *
 * A HOST is letters, digits, dots and hyphens, neither starting nor ending
 * with a dot or hyphen and not all digits (`10809` alone is a port: `:10809`).
 * Anything else is a {@link UsageError} that names what is wrong and shows
 * the accepted forms. {@link ADDRESS_FORMS} says the same in the words that
 * `--help` and the README show.
 *
 * Each kind of address is one row of `kinds` below: how its text reads, how
 * it is written, how to dial it, how to listen on it. A new transport (say
 * `vsock:CID:PORT`) is one more member of {@link Address} and one more row;
 * the compiler asks for the row, and callers, which only hold an
 * {@link Address}, do not change.
 *
 * @module
 */

import { connect as nodeConnect } from "node:net";
import { errnoNumber } from "./errno.ts";
import { ConnectionError, ErrnoError, TimeoutError, UsageError } from "./errors.ts";
import type { ByteStream } from "./io.ts";
import { NodeSocketStream } from "./node_socket.ts";

/** A TCP server: a host name or IP address (IPv6 without brackets) and a port. */
export interface TcpAddress {
  kind: "tcp";
  host: string;
  port: number;
}

/** A Unix socket, by path. */
export interface UnixAddress {
  kind: "unix";
  path: string;
}

/** Where a server is (or where to listen), of any kind. */
export type Address = TcpAddress | UnixAddress;

/** The 9P port (IANA "9pfs"): a SPEC's and `export --listen`'s default. */
export const P9_PORT = 564;
/** The NBD port (IANA "nbd"): `proxy --listen`'s default. */
export const NBD_PORT = 10809;

/** How one use of the grammar differs from another. */
export interface AddressRules {
  /** The port of a host written without one: the protocol's ({@link P9_PORT}, {@link NBD_PORT}). */
  defaultPort: number;
  /** A listening address: `:PORT` (every address) is allowed. */
  listening: boolean;
}

/** One accepted form, as `--help` and the README table show it. */
export interface AddressForm {
  form: string;
  meaning: string;
  /** Only where a server listens (`--listen`), not in a SPEC. */
  listeningOnly: boolean;
}

/** The accepted forms: the grammar in the words shown to users (help texts, README). */
export const ADDRESS_FORMS: readonly AddressForm[] = [
  {
    form: "HOST[:PORT]",
    meaning: `a host name or IPv4 address; PORT defaults to ${P9_PORT} for 9P, ${NBD_PORT} for NBD`,
    listeningOnly: false,
  },
  {
    form: "[IPV6][:PORT]",
    meaning: "an IPv6 address, always in brackets (a zone too: [fe80::1%eth0])",
    listeningOnly: false,
  },
  { form: ":PORT", meaning: "--listen only: every IPv4 address", listeningOnly: true },
  {
    form: "unix:SOCKET",
    meaning: "a Unix socket: an absolute path, or one starting with ./ or ../",
    listeningOnly: false,
  },
];

/** The listening forms, shown with every `--listen` error. */
export const LISTEN_FORMS = joinForms(ADDRESS_FORMS.map((f) => f.form));

/** `a, b, c or d`. */
function joinForms(forms: string[]): string {
  return `${forms.slice(0, -1).join(", ")} or ${forms[forms.length - 1]}`;
}

/** A bound listener: connections, and how to stop. */
export interface Listening {
  /** Where it listens: as asked, with the real port when port 0 was asked for. */
  readonly address: Address;
  /** The next connection (TCP: Nagle off, so small replies leave at once). */
  accept(): Promise<Deno.Conn>;
  /** Stop listening, and remove what the listener left in the file system. */
  close(): Promise<void>;
}

/** How to dial. */
export interface DialOptions {
  /**
   * TCP: connect from a privileged source port (1023 down to 512, the
   * range diod accepts), as `mount -t 9p -o privport` does, for servers
   * that trust only root-owned clients (diod's `privport` export option,
   * nfs-ganesha's `PrivilegedPort`). Needs root (CAP_NET_BIND_SERVICE).
   * Ignored by other kinds of address.
   */
  privilegedPort?: boolean;
}

/** Everything about one kind of address. */
interface AddressKind<A extends Address> {
  /** The text that starts this kind's addresses (`unix:`); "" for the kind without one. */
  prefix: string;
  /** Read the text after the prefix: the address, or why it is not one. */
  read(body: string, rules: AddressRules): A | string;
  /** The text that reads back as `address` (the port left out when it is `defaultPort`). */
  format(address: A, defaultPort?: number): string;
  connect(address: A, options: DialOptions): Promise<ByteStream>;
  listen(address: A): Promise<Listening>;
}

const hostPattern = /^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/;
const ipv6Pattern = /^[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?$/;
/** sun_path holds 108 bytes with the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

const tcp: AddressKind<TcpAddress> = {
  prefix: "",
  read(text, rules) {
    if (text === "") return rules.listening ? "no address given" : "no server given";
    let host: string;
    let port: string | undefined;
    if (text.startsWith("[")) {
      const close = text.indexOf("]");
      if (close < 0) return "unclosed [ in IPv6 address";
      host = text.slice(1, close);
      if (!ipv6Pattern.test(host) || !host.includes(":")) {
        return `"${host}" is not an IPv6 address`;
      }
      const after = text.slice(close + 1);
      if (after !== "" && !after.startsWith(":")) {
        return `"${after}" after the IPv6 address is not :PORT`;
      }
      port = after === "" ? undefined : after.slice(1);
    } else {
      if (text.indexOf(":") !== text.lastIndexOf(":")) {
        return `write IPv6 addresses in brackets, as in [::1]:${rules.defaultPort}`;
      }
      const colon = text.indexOf(":");
      host = colon < 0 ? text : text.slice(0, colon);
      port = colon < 0 ? undefined : text.slice(colon + 1);
      if (host === "") {
        if (!rules.listening) return "no server given";
        host = "0.0.0.0";
      } else if (!hostPattern.test(host)) {
        return `"${host}" is not a host name or address`;
      } else if (/^[0-9]+$/.test(host)) {
        return `"${host}" is not a host name` +
          (rules.listening ? ` (a port alone is written :${host})` : "");
      }
    }
    if (port === undefined) return { kind: "tcp", host, port: rules.defaultPort };
    if (!/^[0-9]{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
      return `port "${port}" is not a number from 1 to 65535`;
    }
    return { kind: "tcp", host, port: Number(port) };
  },
  format(address, defaultPort) {
    const host = address.host.includes(":") ? `[${address.host}]` : address.host;
    return address.port === defaultPort ? host : `${host}:${address.port}`;
  },
  async connect(address, options) {
    if (options.privilegedPort) return await connectFromPrivilegedPort(address);
    const conn = await Deno.connect({
      transport: "tcp",
      hostname: address.host,
      port: address.port,
    });
    // Small requests (Tread headers) must leave at once, not wait for Nagle.
    conn.setNoDelay(true);
    return conn;
  },
  listen(address) {
    const listener = Deno.listen({ transport: "tcp", hostname: address.host, port: address.port });
    const bound = { ...address, port: (listener.addr as Deno.NetAddr).port };
    return Promise.resolve(listening(listener, bound, {
      // Replies, like requests, must not wait for Nagle.
      prepare: (conn) => (conn as Deno.TcpConn).setNoDelay(true),
    }));
  },
};

/** The reserved source ports {@link DialOptions.privilegedPort} tries, from the top down. */
export const PRIVILEGED_PORTS = { highest: 1023, lowest: 512 } as const;

/**
 * The next reserved port to try. It moves on with every attempt, so a
 * reconnect does not first try the port its predecessor may still hold
 * (closing, or in TIME_WAIT).
 */
let nextPrivilegedPort: number = PRIVILEGED_PORTS.highest;

/** What a bind or connect from a taken port fails with: try the next port. */
const portTakenCodes = new Set(["EADDRINUSE", "EADDRNOTAVAIL", "EINVAL"]);

/**
 * Connect from a free reserved port: `Deno.connect` cannot bind a local
 * port, `node:net` can. Every reserved port is tried at most once.
 */
async function connectFromPrivilegedPort(address: TcpAddress): Promise<ByteStream> {
  const { highest, lowest } = PRIVILEGED_PORTS;
  let lastCode = "";
  for (let tries = highest - lowest + 1; tries > 0; tries--) {
    const localPort = nextPrivilegedPort;
    nextPrivilegedPort = localPort === lowest ? highest : localPort - 1;
    const stream = new NodeSocketStream((onread) =>
      nodeConnect({ host: address.host, port: address.port, localPort, onread })
    );
    try {
      await new Promise<void>((resolve, reject) => {
        stream.socket.once("connect", resolve);
        stream.socket.once("error", reject);
      });
      // Small requests (Tread headers) must leave at once, not wait for Nagle.
      stream.socket.setNoDelay(true);
      return stream;
    } catch (err) {
      stream.close();
      const code = (err as { code?: string }).code ?? "";
      if (code === "EACCES" || code === "EPERM") {
        throw new ErrnoError(
          errnoNumber(code),
          `--privport: bind source port ${localPort}`,
          "a privileged port needs root (CAP_NET_BIND_SERVICE)",
        );
      }
      if (!portTakenCodes.has(code)) throw new ConnectionError(`connect: ${nodeReason(err)}`);
      lastCode = code;
    }
  }
  throw new ConnectionError(
    `connect: no free privileged source port from ${lowest} to ${highest} (${lastCode})`,
  );
}

/** A node:net error in the words {@link connectReason} uses. */
function nodeReason(err: unknown): string {
  switch ((err as { code?: string }).code) {
    case "ECONNREFUSED":
      return "connection refused";
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return "no such socket or host";
    default:
      return err instanceof Error ? err.message : String(err);
  }
}

const unix: AddressKind<UnixAddress> = {
  prefix: "unix:",
  read(path) {
    if (path === "") return "a Unix socket needs a path, as in unix:/run/9p.sock";
    if (!/^\.{0,2}\//.test(path)) {
      return `a Unix socket path must be absolute or start with ./ ("${path}")`;
    }
    if (path.includes("\0")) return "NUL byte in the Unix socket path";
    if (new TextEncoder().encode(path).length > MAX_SOCKET_PATH_BYTES) {
      return `a Unix socket path holds at most ${MAX_SOCKET_PATH_BYTES} bytes`;
    }
    return { kind: "unix", path };
  },
  format: (address) => `unix:${address.path}`,
  connect: (address) => Deno.connect({ transport: "unix", path: address.path }),
  async listen(address) {
    // A socket left by a process that died would refuse the bind; any other
    // kind of file there is the user's, and binding fails on it.
    const existing = await Deno.lstat(address.path).catch(() => undefined);
    if (existing?.isSocket) await Deno.remove(address.path);
    const listener = Deno.listen({ transport: "unix", path: address.path });
    return listening(listener, address, {
      release: () => Deno.remove(address.path).catch(() => {}),
    });
  },
};

/** A {@link Listening} over a Deno listener. */
function listening(
  listener: Deno.Listener,
  address: Address,
  hooks: { prepare?: (conn: Deno.Conn) => void; release?: () => Promise<void> },
): Listening {
  let closed = false;
  return {
    address,
    async accept() {
      const conn = await listener.accept();
      hooks.prepare?.(conn);
      return conn;
    },
    async close() {
      if (closed) return;
      closed = true;
      try {
        listener.close();
      } catch {
        // Already closed.
      }
      await hooks.release?.();
    },
  };
}

/** One row per kind of {@link Address}; the type makes a new kind add its row. */
const kinds: { [K in Address["kind"]]: AddressKind<Extract<Address, { kind: K }>> } = {
  tcp,
  unix,
};

function kindOf<A extends Address>(address: A): AddressKind<A> {
  return kinds[address.kind] as unknown as AddressKind<A>;
}

/** The kind whose prefix starts `text` (TCP, which has none, otherwise). */
function kindFor(text: string): AddressKind<Address> {
  return kinds[addressKindOf(text)] as AddressKind<Address>;
}

/** The kind of address `text` would be, by its prefix (whether or not it reads as one). */
export function addressKindOf(text: string): Address["kind"] {
  return (Object.keys(kinds) as Address["kind"][]).find((k) =>
    kinds[k].prefix !== "" && text.startsWith(kinds[k].prefix)
  ) ?? "tcp";
}

/**
 * Read `text` as an address: the address, or why it is not one (a phrase for
 * the caller's message, which also shows the accepted forms).
 */
export function readAddress(
  text: string,
  rules: AddressRules,
): { address: Address } | { reason: string } {
  const kind = kindFor(text);
  const read = kind.read(text.slice(kind.prefix.length), rules);
  return typeof read === "string" ? { reason: read } : { address: read };
}

/**
 * Parse a `--listen` address (`rules.listening` is implied); a malformed one
 * is a {@link UsageError} naming what is wrong and showing {@link LISTEN_FORMS}.
 */
export function parseListen(text: string, defaultPort: number): Address {
  const read = readAddress(text, { defaultPort, listening: true });
  if ("address" in read) return read.address;
  throw new UsageError(`bad --listen "${text}": ${read.reason} (expected ${LISTEN_FORMS})`);
}

/**
 * Split `ADDRESS ":" "/" ...` after the address: it ends at the first `:/`
 * past its kind's prefix (so `unix:/run/9p.sock:/img` splits after the
 * socket). Undefined when there is no `:/`.
 */
export function splitBeforePath(text: string): { address: string; path: string } | undefined {
  const end = text.indexOf(":/", kindFor(text).prefix.length);
  return end < 0 ? undefined : { address: text.slice(0, end), path: text.slice(end + 1) };
}

/**
 * `127.0.0.1:564`, `[::1]:564` or `unix:/run/9p.sock`: how errors, logs and
 * SPECs name an address. With `defaultPort`, a TCP port equal to it is left
 * out (`host`), as a user would write it. Reads back with {@link readAddress}.
 */
export function formatAddress(address: Address, defaultPort?: number): string {
  return kindOf(address).format(address, defaultPort);
}

/**
 * Connect to `address`, giving up after `timeoutMs` with a
 * {@link TimeoutError}. A failure is a {@link ConnectionError}, except what
 * no retry can mend (an {@link ErrnoError}: no permission for a privileged
 * port).
 */
export async function dial(
  address: Address,
  timeoutMs: number,
  options: DialOptions = {},
): Promise<ByteStream> {
  const attempt = kindOf(address).connect(address, options);
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new TimeoutError(`connect: no answer in ${timeoutMs / 1000} s`)),
      timeoutMs,
    );
  });
  try {
    return await Promise.race([attempt, deadline]);
  } catch (cause) {
    // A connection that arrives after the deadline must not leak.
    attempt.then((conn) => conn.close(), () => {});
    if (cause instanceof ConnectionError || cause instanceof ErrnoError) throw cause;
    throw new ConnectionError(`connect: ${connectReason(cause)}`, { cause });
  } finally {
    clearTimeout(timer);
  }
}

function connectReason(cause: unknown): string {
  if (cause instanceof Deno.errors.ConnectionRefused) return "connection refused";
  if (cause instanceof Deno.errors.NotFound) return "no such socket or host";
  if (cause instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (cause instanceof Error) return cause.message;
  return String(cause);
}

/**
 * Bind `address` and start listening. A TCP port 0 binds a free port (see
 * {@link Listening.address}). A Unix socket file left behind by a process
 * that died is replaced; any other file at that path is an error.
 */
export async function listen(address: Address): Promise<Listening> {
  // Awaited here so that a bind failure thrown at once (EADDRINUSE) rejects.
  return await kindOf(address).listen(address);
}
