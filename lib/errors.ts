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

/**
 * An operation failed with a Linux errno: the one error type that carries an
 * errno, wherever it came from. Thrown as is for local failures (a system
 * call, a check on what a server reported, such as an image that is a
 * directory); a server's Rlerror is the subclass {@link P9Error}. Never
 * retriable by itself ({@link isRetriable}); {@link exitCodeFor} and the NBD
 * boundary (`nbdErrorFor`) read only its errno, so a local failure and a
 * server's answer with the same errno end the same way.
 */
export class ErrnoError extends Error {
  override name = "ErrnoError";
  /** The errno's symbolic name, for example `ENOENT`. */
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

/**
 * A 9P server answered a request with Rlerror (or Rerror): its considered
 * answer, and only that. Errors this side decides are plain
 * {@link ErrnoError}s, so that whoever asks "did the server say so?" (the
 * failover layer, for one) is not misled.
 */
export class P9Error extends ErrnoError {
  override name = "P9Error";
  constructor(
    errno: number,
    /** What was being done, for example `attach /srv/img`. */
    operation: string,
    options?: ErrorOptions,
  ) {
    super(errno, operation, "", options);
  }
}

/**
 * Authentication with a server could not be done, or was refused: munged
 * unreachable or libmunge missing, a credential the server refused (expired,
 * replayed, munged keys that differ), or a server that requires
 * authentication this side was told not to do (`--auth none`). Exit code
 * {@link ExitCode.permission}. Not retriable ({@link isRetriable}): another
 * try with the same key and the same munged ends the same way, so attaching
 * fails at once with this message; a reconnect loop that is already running
 * keeps trying every replica with backoff, as it does for any failure (munged
 * may be restarting, a key may be fixed), and logs it.
 */
export class AuthError extends Error {
  override name = "AuthError";
}

/** Errnos that mean "the image (or device) is not there". */
const notFoundCodes = new Set(["ENOENT", "ENOTDIR", "ENXIO", "ENODEV"]);
/** Errnos that mean "you may not". */
const permissionCodes = new Set(["EPERM", "EACCES", "EROFS"]);

/**
 * May the operation that failed with `err` be tried again, on a new session
 * or another server? Connection-level failures (including a peer that broke
 * the protocol, which poisons its connection) are; an errno (a server's
 * Rlerror or a local failure), an {@link AuthError}, a usage error or
 * anything else is not.
 */
export function isRetriable(err: unknown): boolean {
  return err instanceof ConnectionError || err instanceof ProtocolError;
}

/** Map any error to the documented exit code of the CLI. */
export function exitCodeFor(err: unknown): number {
  if (err instanceof UsageError) return ExitCode.usage;
  if (err instanceof AuthError) return ExitCode.permission;
  if (err instanceof ErrnoError) {
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
