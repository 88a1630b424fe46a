/**
 * `deno task compile`: build the single `dist/9nbd` binary with
 * `deno compile`. deno compile needs `denort`, the runtime the binary is
 * built on, which it downloads from Deno's download host unless DENORT_BIN
 * names one. Where that download fails and no DENORT_BIN is set, say so in
 * one line instead of a page of DNS errors.
 *
 * Usage: deno task compile [OUTPUT]   (default dist/9nbd)
 *
 * @module
 */

import { v8FlagsArgument } from "../lib/runtime.ts";

const root = new URL("..", import.meta.url).pathname;
const output = Deno.args[0] ?? "dist/9nbd";
const denort = Deno.env.get("DENORT_BIN");

if (denort && !(await Deno.stat(denort).then((s) => s.isFile, () => false))) {
  console.error(`compile: DENORT_BIN=${denort} is not a file`);
  Deno.exit(1);
}

const result = await new Deno.Command(Deno.execPath(), {
  args: ["compile", "-A", v8FlagsArgument(), "--output", output, "main.ts"],
  cwd: root,
  stdout: "inherit",
  stderr: "piped",
}).output();
const errors = new TextDecoder().decode(result.stderr);
if (result.success) {
  console.log(`compile: built ${output}`);
} else if (!denort && /denort|dns error|download/i.test(errors)) {
  console.error(
    `compile: deno compile could not download its denort runtime (Deno ${Deno.version.deno}); ` +
      "set DENORT_BIN=/path/to/denort of that version and run again",
  );
} else {
  console.error(errors.trimEnd());
}
Deno.exit(result.code);
