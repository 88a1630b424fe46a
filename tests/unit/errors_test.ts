/** The two functions that interpret errors: retriable or not, and which exit code. */

import assert from "node:assert/strict";
import {
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
