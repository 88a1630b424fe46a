/**
 * How 9nbd starts itself again: the attach daemon gets the same V8 flags
 * as a compiled binary would have baked in.
 *
 * @module
 */

import assert from "node:assert/strict";
import { selfCommand, V8_FLAGS, v8FlagsArgument } from "../../lib/runtime.ts";

Deno.test("the V8 flags cap the young generation's semi-spaces", () => {
  assert.ok(V8_FLAGS.some((flag) => /^--max-semi-space-size=\d+$/.test(flag)), V8_FLAGS.join(" "));
  assert.equal(v8FlagsArgument(), `--v8-flags=${V8_FLAGS.join(",")}`);
});

Deno.test("under deno, the daemon command runs the main module with the V8 flags", () => {
  const command = selfCommand();
  assert.equal(command[0], Deno.execPath());
  assert.deepEqual(command.slice(1, 4), ["run", "-A", v8FlagsArgument()]);
  assert.equal(command[4], new URL(Deno.mainModule).pathname);
  assert.equal(command.length, 5);
});
