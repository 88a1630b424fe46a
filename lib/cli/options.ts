/**
 * Command-line plumbing shared by every command: option tables for
 * `node:util` parseArgs, conversion of their values (sizes, seconds, ids)
 * with usage errors that say what was expected, and the help texts' common
 * parts.
 *
 * @module
 */

import { parseArgs, type ParseArgsConfig } from "node:util";
import { ADDRESS_FORMS } from "../address.ts";
import { UsageError } from "../errors.ts";
import type { ResilientOptions } from "../failover/mod.ts";
import type { OpenOptions } from "../image.ts";
import { DEFAULT_MUNGE_SOCKET } from "../kernel/munge.ts";
import { AUTH_MODES, type AuthMode } from "../p9/auth.ts";
import type { ReadAheadOptions } from "../readahead.ts";
import { setupLogging, type Verbosity } from "../log.ts";
import { SPEC_FORMS } from "../spec.ts";

type Options = NonNullable<ParseArgsConfig["options"]>;

/** Options every command takes. */
export const commonOptions = {
  help: { type: "boolean", short: "h" },
  verbose: { type: "boolean", short: "v", multiple: true },
  quiet: { type: "boolean", short: "q" },
} as const satisfies Options;

/** Options of commands that talk to a 9P server. */
export const serverOptions = {
  uname: { type: "string" },
  uid: { type: "string" },
  msize: { type: "string" },
  timeout: { type: "string" },
  connections: { type: "string" },
  "max-inflight": { type: "string" },
  auth: { type: "string" },
  "munge-socket": { type: "string" },
  privport: { type: "boolean" },
} as const satisfies Options;

/**
 * The address grammar for help texts: {@link ADDRESS_FORMS} one a line, the
 * same words as the README's table.
 */
export const addressHelp = `ADDRESS (a SPEC's server, or where --listen listens) is one of:
${ADDRESS_FORMS.map((f) => `  ${f.form.padEnd(15)} ${f.meaning}`).join("\n")}`;

/** Help text for {@link serverOptions}, the SPEC and its ADDRESS. */
export const serverHelp = `
SPEC is ${SPEC_FORMS}.
  host:/srv/img            attach with aname /srv/img on port 564 (diod)
  host:5640:/srv/img       another port;  [::1]:/srv/img  IPv6
  unix:/run/9p.sock:/img   a Unix socket
  host:/export//dir/img    attach to /export, then walk dir/img (nfs-ganesha)
${addressHelp}

Server options:
  --uname NAME      user name to attach as (default root)
  --uid N           numeric uid to attach as (default: your uid)
  --msize BYTES     largest 9P message to ask for (default 1M; the server may grant less)
  --timeout SECONDS give up on a server that does not answer (default 10)
  --connections N   9P connections to the server, used in parallel (default 1)
  --max-inflight N  9P requests in flight per connection (default 64);
                    --max-inflight 1 --connections 1 is the old one-at-a-time design
  --auth MODE       auto (default): authenticate with MUNGE when the server asks
                    for it (diod does by default); munge: always (fail against a
                    server that takes none); none: never
  --munge-socket PATH
                    munged's socket (default ${DEFAULT_MUNGE_SOCKET})
  --privport        connect from a privileged source port (512-1023; needs
                    root), for servers that trust only those (diod's privport)`;

/** Help text for {@link commonOptions}. */
export const commonHelp = `
Common options:
  -v, --verbose     say more (twice: debug)
  -q, --quiet       say only errors
  -h, --help        this help`;

/** parseArgs with its errors turned into usage errors. */
export function parse<O extends Options>(
  args: string[],
  options: O,
): {
  values: ReturnType<typeof parseArgs<{ options: O; allowPositionals: true }>>["values"];
  positionals: string[];
} {
  try {
    const { values, positionals } = parseArgs({
      args,
      options,
      allowPositionals: true,
      strict: true,
    });
    return { values, positionals };
  } catch (err) {
    const { code, message } = err as { code?: string; message: string };
    const named = /'([^']+)'/.exec(message)?.[1];
    if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" && named) {
      throw new UsageError(`unknown option ${named}`);
    }
    throw new UsageError(message.split("\n")[0].replace(/ To specify .*/, ""));
  }
}

/** Set up logging from -v/-q. */
export async function applyVerbosity(
  values: { verbose?: boolean[]; quiet?: boolean },
  timestamps = false,
): Promise<void> {
  const count = values.verbose?.length ?? 0;
  const verbosity: Verbosity = values.quiet
    ? "quiet"
    : count >= 2
    ? "debug"
    : count === 1
    ? "verbose"
    : "normal";
  await setupLogging(verbosity, timestamps);
}

const sizeUnits: Record<string, number> = {
  "": 1,
  k: 1024,
  m: 1024 ** 2,
  g: 1024 ** 3,
  t: 1024 ** 4,
};

/** `65536`, `64k`, `1M`, `2G` → bytes. */
export function parseSize(option: string, text: string): number {
  const match = /^([0-9]+)([kmgt]?)(i?b)?$/i.exec(text.trim());
  if (!match) throw new UsageError(`--${option}: "${text}" is not a size (e.g. 65536, 64K, 1M)`);
  const value = Number(match[1]) * sizeUnits[match[2].toLowerCase()];
  if (!Number.isSafeInteger(value)) throw new UsageError(`--${option}: "${text}" is too large`);
  return value;
}

/** A number of seconds (fractions allowed) within [min, max]. */
export function parseSeconds(option: string, text: string, min: number, max = 86_400): number {
  const value = Number(text);
  if (!/^[0-9]+(\.[0-9]+)?$/.test(text.trim()) || value < min || value > max) {
    throw new UsageError(`--${option}: "${text}" is not a number of seconds from ${min} to ${max}`);
  }
  return value;
}

/** A whole number within [min, max]. */
export function parseInteger(option: string, text: string, min: number, max: number): number {
  const value = Number(text);
  if (!/^[0-9]+$/.test(text.trim()) || value < min || value > max) {
    throw new UsageError(`--${option}: "${text}" is not a whole number from ${min} to ${max}`);
  }
  return value;
}

/** The server options as {@link OpenOptions}. */
export function openOptions(values: {
  uname?: string;
  uid?: string;
  msize?: string;
  timeout?: string;
  connections?: string;
  "max-inflight"?: string;
  auth?: string;
  "munge-socket"?: string;
  privport?: boolean;
}): OpenOptions {
  const options: OpenOptions = {};
  if (values.uname !== undefined) {
    if (values.uname === "") throw new UsageError("--uname: empty user name");
    options.uname = values.uname;
  }
  if (values.uid !== undefined) options.uid = parseInteger("uid", values.uid, 0, 0xfffffffe);
  if (values.msize !== undefined) {
    const msize = parseSize("msize", values.msize);
    if (msize < 4096 || msize > 64 * 1024 * 1024) {
      throw new UsageError(`--msize: ${msize} is outside 4K..64M`);
    }
    options.msize = msize;
  }
  options.timeoutMs = parseSeconds("timeout", values.timeout ?? "10", 1) * 1000;
  if (values.connections !== undefined) {
    options.connections = parseInteger("connections", values.connections, 1, 64);
  }
  if (values["max-inflight"] !== undefined) {
    options.maxInflight = parseInteger("max-inflight", values["max-inflight"], 1, 1024);
  }
  options.auth = parseAuthMode(values.auth ?? "auto", AUTH_MODES);
  if (values["munge-socket"] !== undefined) {
    options.mungeSocket = parseMungeSocket(values["munge-socket"]);
  }
  if (values.privport) options.privilegedPort = true;
  return options;
}

/** `--auth`: one of `modes`. */
export function parseAuthMode<M extends AuthMode>(text: string, modes: readonly M[]): M {
  if (!(modes as readonly string[]).includes(text)) {
    throw new UsageError(`--auth: "${text}" is not ${modes.join(", ")}`);
  }
  return text as M;
}

/**
 * `--munge-socket`: fixed here, once, for every credential. A relative path
 * stays relative (see libmungeClient in lib/kernel/munge.ts).
 */
export function parseMungeSocket(text: string): string {
  if (text === "" || text.includes("\0")) throw new UsageError("--munge-socket: not a path");
  return text;
}

/** Exactly `count` positional arguments, named for the error message. */
export function positionals(args: string[], names: string[]): string[] {
  if (args.length < names.length) throw new UsageError(`missing ${names[args.length]}`);
  if (args.length > names.length) {
    throw new UsageError(`unexpected argument "${args[names.length]}"`);
  }
  return args;
}

/** Options of commands that serve an image from replicas (attach, proxy). */
export const resilienceOptions = {
  rw: { type: "boolean" },
  "give-up-after": { type: "string" },
  failback: { type: "boolean" },
  sha256: { type: "string" },
  readahead: { type: "string" },
} as const satisfies Options;

/** Memory for read-ahead windows (`--readahead`). */
export const READAHEAD_CACHE_BYTES = 8 * 1024 * 1024;

/** Help text for {@link resilienceOptions}. */
export const resilienceHelp =
  `  --rw                allow writes (FLUSH and FUA reach the server as Tfsync);
                      takes exactly one SPEC
  --give-up-after SECONDS
                      fail I/O with EIO after this long without a server
                      (default: never, like an NFS hard mount)
  --failback          return to a preferred replica when it answers again
  --sha256 HEX        the image's full SHA-256: every replica is checked
                      before it serves (reads the whole image once per replica)
  --readahead KB      read-only: a small read that follows closely on a recent
                      one fetches the whole KB-sized window around it, kept in
                      a ${
    READAHEAD_CACHE_BYTES / 1024 / 1024
  } MiB cache (a power of two, 4 to 4096; 0 = off,
                      the default)`;

/** The resilient image's options, and the read-ahead to put in front of it. */
export interface BackendOptions extends ResilientOptions {
  /** Read-ahead for a read-only image (see {@link ReadAheadOptions}); none by default. */
  readAhead?: ReadAheadOptions;
}

/** Server and resilience options, checked against the number of SPECs, as {@link BackendOptions}. */
export function resilientOptions(
  values: Parameters<typeof openOptions>[0] & {
    rw?: boolean;
    "give-up-after"?: string;
    failback?: boolean;
    sha256?: string;
    readahead?: string;
  },
  specCount: number,
): BackendOptions {
  const options: BackendOptions = openOptions(values);
  options.writable = values.rw ?? false;
  if (options.writable && specCount > 1) {
    throw new UsageError(
      "--rw takes exactly one SPEC: writable replicas would split (no split brain)",
    );
  }
  if (values["give-up-after"] !== undefined) {
    options.giveUpAfterMs = parseSeconds("give-up-after", values["give-up-after"], 1) * 1000;
  }
  options.failback = values.failback ?? false;
  if (values.sha256 !== undefined) {
    if (!/^[0-9a-fA-F]{64}$/.test(values.sha256)) {
      throw new UsageError("--sha256 takes 64 hexadecimal digits");
    }
    options.sha256 = values.sha256.toLowerCase();
  }
  if (values.readahead !== undefined) {
    const kib = parseInteger("readahead", values.readahead, 0, 4096);
    if (kib !== 0 && (kib < 4 || (kib & (kib - 1)) !== 0)) {
      throw new UsageError(`--readahead: ${kib} is not 0 or a power of two from 4 to 4096`);
    }
    if (kib !== 0 && options.writable) {
      throw new UsageError("--readahead is for read-only images; it cannot be used with --rw");
    }
    if (kib !== 0) {
      options.readAhead = { windowBytes: kib * 1024, cacheBytes: READAHEAD_CACHE_BYTES };
    }
  }
  return options;
}
