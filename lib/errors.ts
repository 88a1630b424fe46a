/**
 * The project's error types and the two functions that interpret them:
 * {@link isRetriable} (may a failover layer try again elsewhere?) and
 * {@link exitCodeFor} (which documented exit code does the CLI return?).
 *
 * @module
 */

import { errnoName } from "./errno.ts";

/** Documented exit codes of the `9nbd` command (see README "Exit codes"). */
export const ExitCode = {
  ok: 0,
  /** A runtime failure: server, network, protocol or I/O. */
  failure: 1,
  /** The command line is wrong: unknown option, bad SPEC, missing argument. */
  usage: 2,
  /** Permission: not root, or the server refused access. */
  permission: 3,
  /** Something named does not exist: the image path, the device. */
  notFound: 4,
  /** The device is busy (in use by another attachment or mount). */
  busy: 5,
} as const;

/** Bad command-line input; the CLI prints the message and exits with {@link ExitCode.usage}. */
export class UsageError extends Error {
  override name = "UsageError";
}

/**
 * A peer broke the protocol (9P or NBD): a truncated, oversized or ill-formed
 * frame, an unknown tag, a reply of the wrong type, an absurd errno. The
 * connection that carried it can no longer be trusted.
 */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}

/**
 * The connection to a server is gone or unusable (reset, closed, timed out,
 * or poisoned by a protocol error). Always retriable: the same request may be
 * sent again on a new session.
 */
export class ConnectionError extends Error {
  override name = "ConnectionError";
}

/** A request was not answered in time; the connection is declared dead. */
export class TimeoutError extends ConnectionError {
  override name = "TimeoutError";
}

/** The server answered a 9P request with Rlerror. */
export class P9Error extends Error {
  override name = "P9Error";
  /** The errno's symbolic name, for example `ENOENT`. */
  readonly code: string;
  constructor(
    readonly errno: number,
    /** What was being done, for example `attach /srv/img`. */
    readonly operation: string,
    options?: ErrorOptions,
  ) {
    const code = errnoName(errno)?.name ?? `errno ${errno}`;
    const text = errnoName(errno)?.message ?? "Unknown error";
    super(`${operation}: ${text} (${code})`, options);
    this.code = code;
  }
}

/** A system call failed (FFI into libc, or a Deno file operation). */
export class ErrnoError extends Error {
  override name = "ErrnoError";
  readonly code: string;
  constructor(
    readonly errno: number,
    /** What was being done, for example `ioctl NBD_SET_SOCK /dev/nbd0`. */
    readonly operation: string,
    /** A sentence telling the user what to do about it, or empty. */
    readonly hint = "",
    options?: ErrorOptions,
  ) {
    const info = errnoName(errno);
    const code = info?.name ?? `errno ${errno}`;
    super(
      `${operation}: ${info?.message ?? "Unknown error"} (${code})${hint ? `; ${hint}` : ""}`,
      options,
    );
    this.code = code;
  }
}

/** Errnos that mean "the image (or device) is not there". */
const notFoundCodes = new Set(["ENOENT", "ENOTDIR", "ENXIO", "ENODEV"]);
/** Errnos that mean "you may not". */
const permissionCodes = new Set(["EPERM", "EACCES", "EROFS"]);

/**
 * May the operation that failed with `err` be tried again, on a new session
 * or another server? Connection-level failures (including a peer that broke
 * the protocol, which poisons its connection) are; a server's considered
 * answer (Rlerror), a usage error or a local syscall failure is not.
 */
export function isRetriable(err: unknown): boolean {
  return err instanceof ConnectionError || err instanceof ProtocolError;
}

/** Map any error to the documented exit code of the CLI. */
export function exitCodeFor(err: unknown): number {
  if (err instanceof UsageError) return ExitCode.usage;
  if (err instanceof P9Error || err instanceof ErrnoError) {
    if (notFoundCodes.has(err.code)) return ExitCode.notFound;
    if (permissionCodes.has(err.code)) return ExitCode.permission;
    if (err.code === "EBUSY") return ExitCode.busy;
  }
  if (err instanceof Deno.errors.NotFound) return ExitCode.notFound;
  if (err instanceof Deno.errors.PermissionDenied) return ExitCode.permission;
  return ExitCode.failure;
}

/**
 * One line for the user, without stack traces. Messages are written to be
 * complete where errors are wrapped, so causes are not repeated here.
 */
export function describeError(err: unknown): string {
  if (err instanceof Error) return err.message.split("\n")[0];
  return String(err);
}

/**
 * Say which server an error came from, keeping its class (and so its exit
 * code and retriability): `server 127.0.0.1:564: attach /srv/img: ...`.
 */
export function inServer<E>(label: string, err: E): E {
  if (err instanceof Error && !err.message.startsWith("server ")) {
    err.message = `server ${label}: ${err.message}`;
  }
  return err;
}
