/**
 * The README's promise: `deno task demo` runs the main job on an embedded
 * default and exits 0 with no error reaching the reader.
 *
 * @module
 */

import assert from "node:assert/strict";
import { skipTier } from "../support/tier.ts";
import { vmUnavailable } from "../../tools/vm.ts";

const root = new URL("../..", import.meta.url).pathname;

Deno.test("deno task demo serves, attaches, survives a server restart and cleans up", async () => {
  const reason = await vmUnavailable();
  if (reason) {
    skipTier("vm (demo)", reason);
    return;
  }
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}/demo/demo.ts`],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
  assert.equal(output.code, 0, text);
  assert.match(text, /the reader made \d+ passes over 303 files .*: 0 errors/);
  assert.match(text, /serving from 127\.0\.0\.1:\d+ after [0-9.]+ s/);
  assert.match(text, /nothing left behind/);
});
