/** The two functions that interpret errors: retriable or not, and which exit code. */

import assert from "node:assert/strict";
import {
  AuthError,
  ConnectionError,
  describeError,
  ErrnoError,
  ExitCode,
  exitCodeFor,
  inServer,
  isRetriable,
  P9Error,
  ProtocolError,
  TimeoutError,
  UsageError,
} from "../../lib/errors.ts";
import { MungeError, MungeStatus } from "../../lib/kernel/munge.ts";
import { nbdErrorFor } from "../../lib/nbd/wire.ts";

Deno.test("connection failures, timeouts and protocol errors are retriable; answers are not", () => {
  assert.equal(isRetriable(new ConnectionError("reset")), true);
  assert.equal(isRetriable(new TimeoutError("no reply")), true);
  assert.equal(isRetriable(new ProtocolError("garbage")), true);
  assert.equal(isRetriable(new P9Error(2, "attach /x")), false);
  assert.equal(isRetriable(new UsageError("bad")), false);
  assert.equal(isRetriable(new ErrnoError(16, "ioctl")), false);
  assert.equal(isRetriable(new Error("other")), false);
});

Deno.test("every documented exit code has the errors that lead to it", () => {
  assert.equal(exitCodeFor(new UsageError("bad SPEC")), ExitCode.usage);
  assert.equal(exitCodeFor(new P9Error(2, "attach")), ExitCode.notFound);
  assert.equal(exitCodeFor(new P9Error(13, "walk")), ExitCode.permission);
  assert.equal(exitCodeFor(new P9Error(1, "attach")), ExitCode.permission);
  assert.equal(exitCodeFor(new ErrnoError(16, "attach /dev/nbd0")), ExitCode.busy);
  assert.equal(exitCodeFor(new ErrnoError(6, "open /dev/nbd9")), ExitCode.notFound);
  assert.equal(exitCodeFor(new ConnectionError("refused")), ExitCode.failure);
  assert.equal(exitCodeFor(new P9Error(5, "read")), ExitCode.failure);
});

Deno.test("errors read as one line naming the server, the operation and the errno", () => {
  const err = inServer("127.0.0.1:564", new P9Error(2, "attach /srv/img"));
  assert.equal(
    describeError(err),
    "server 127.0.0.1:564: attach /srv/img: No such file or directory (ENOENT)",
  );
  assert.equal(inServer("b:564", err).message, err.message, "a server is named once");
  assert.equal(describeError(new Error("two\nlines")), "two");
  assert.match(
    new ErrnoError(1, "attach /dev/nbd0", "needs root (CAP_SYS_ADMIN)").message,
    /^attach \/dev\/nbd0: Operation not permitted \(EPERM\); needs root/,
  );
});

Deno.test("a server's Rlerror is an ErrnoError with the same one-line message", () => {
  const answer = new P9Error(21, "open /srv");
  assert.ok(answer instanceof ErrnoError);
  assert.equal(answer.name, "P9Error");
  assert.equal(answer.message, "open /srv: Is a directory (EISDIR)");
  assert.equal(new ErrnoError(21, "open /srv").message, answer.message);
  assert.equal(answer.code, "EISDIR");
  assert.equal(answer.errno, 21);
});

/**
 * Every kind of error lib/ throws, with what isRetriable and exitCodeFor must
 * decide for it. The local errno errors (EISDIR from opening a directory,
 * ENOENT from a short Rwalk, EROFS from writing a read-only image) decide
 * exactly as the P9Errors they were before.
 */
const decisions: [string, unknown, boolean, number][] = [
  ["usage", new UsageError("bad SPEC"), false, ExitCode.usage],
  ["protocol", new ProtocolError("garbage"), true, ExitCode.failure],
  ["connection", new ConnectionError("reset"), true, ExitCode.failure],
  ["timeout", new TimeoutError("no reply"), true, ExitCode.failure],
  ["Rlerror ENOENT", new P9Error(2, "attach /x"), false, ExitCode.notFound],
  ["Rlerror EACCES", new P9Error(13, "attach /x"), false, ExitCode.permission],
  ["Rlerror EIO", new P9Error(5, "read"), false, ExitCode.failure],
  ["local EISDIR (a directory)", new ErrnoError(21, "open /srv"), false, ExitCode.failure],
  ["local ENOENT (short walk)", new ErrnoError(2, "walk dir/x"), false, ExitCode.notFound],
  ["local EROFS (read-only)", new ErrnoError(30, "write"), false, ExitCode.permission],
  [
    "authentication (a refused MUNGE credential, a key that differs)",
    new AuthError("attach /x: the server refused our MUNGE credential"),
    false,
    ExitCode.permission,
  ],
  [
    "munged not running",
    new MungeError(MungeStatus.socket, "munged is not running (no socket at /run/munge)"),
    false,
    ExitCode.permission,
  ],
  ["syscall EPERM", new ErrnoError(1, "attach", "needs root"), false, ExitCode.permission],
  ["syscall EBUSY", new ErrnoError(16, "attach /dev/nbd0"), false, ExitCode.busy],
  ["syscall ENXIO", new ErrnoError(6, "detach /dev/nbd3"), false, ExitCode.notFound],
  ["syscall ETIMEDOUT", new ErrnoError(110, "detach /dev/nbd3"), false, ExitCode.failure],
  ["Deno NotFound", new Deno.errors.NotFound("x"), false, ExitCode.notFound],
  ["Deno PermissionDenied", new Deno.errors.PermissionDenied("x"), false, ExitCode.permission],
  ["out of range", new RangeError("outside the image"), false, ExitCode.failure],
  ["anything else", new Error("other"), false, ExitCode.failure],
];

for (const [what, err, retriable, exitCode] of decisions) {
  Deno.test(`${what}: retriable ${retriable}, exit code ${exitCode}`, () => {
    assert.equal(isRetriable(err), retriable);
    assert.equal(exitCodeFor(err), exitCode);
    assert.equal(isRetriable(inServer("h:564", err)), retriable, "naming the server keeps it");
    assert.equal(exitCodeFor(inServer("h:564", err)), exitCode, "naming the server keeps it");
  });
}

Deno.test("a local errno and a server's Rlerror with that errno end the same way everywhere", () => {
  for (const errno of [1, 2, 5, 6, 13, 16, 21, 22, 28, 30, 95, 110, 122]) {
    const local = new ErrnoError(errno, "op");
    const answer = new P9Error(errno, "op");
    assert.equal(local.message, answer.message, `errno ${errno}`);
    assert.equal(isRetriable(local), isRetriable(answer), `errno ${errno}`);
    assert.equal(exitCodeFor(local), exitCodeFor(answer), `errno ${errno}`);
    assert.equal(nbdErrorFor(local), nbdErrorFor(answer), `errno ${errno}`);
  }
  assert.equal(nbdErrorFor(new ErrnoError(30, "write")), 1, "EROFS reaches NBD as EPERM");
  assert.equal(nbdErrorFor(new ErrnoError(28, "write")), 28);
  assert.equal(nbdErrorFor(new ErrnoError(21, "open")), 5, "no block meaning: EIO");
});

Deno.test("errnoOf reads a file error's errno name, and falls back to EIO", async () => {
  const { Errno, errnoOf } = await import("../../lib/errno.ts");
  const missing = await Deno.stat("/nonexistent-9nbd-test").catch((err) => err);
  assert.equal(errnoOf(missing), Errno.ENOENT);
  assert.equal(errnoOf(Object.assign(new Error("x"), { code: "ELOOP" })), Errno.ELOOP);
  assert.equal(errnoOf(Object.assign(new Error("x"), { code: "ENOTANERRNO" })), Errno.EIO);
  assert.equal(errnoOf("not an error"), Errno.EIO);
  assert.equal(errnoOf(null), Errno.EIO);
});
