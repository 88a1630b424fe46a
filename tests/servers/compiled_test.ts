/**
 * The compiled binary behaves like `deno run main.ts`: built with
 * `deno task compile` when a denort runtime is available (DENORT_BIN), run
 * against diod. Where no denort can be had (it is downloaded from a host
 * these machines cannot reach), the test reports SKIPPED through the tier
 * mechanism, marked optional: it runs whenever a denort is given, and its
 * absence fails nothing (no CI machine has one either).
 *
 * @module
 */

import assert from "node:assert/strict";
import { runCli } from "../support/cli.ts";
import { serverUnavailable, startDiod } from "../../tools/servers.ts";
import { skipTier } from "../support/tier.ts";

const root = new URL("../..", import.meta.url).pathname;

Deno.test({
  name: "the compiled binary prints its version and reads an image like deno run does",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    if (!Deno.env.get("DENORT_BIN")) {
      skipTier(
        "servers (compiled binary)",
        "no denort runtime to build it on: set DENORT_BIN=/path/to/denort of the same Deno version",
        "runs whenever DENORT_BIN is given",
      );
      return;
    }
    const unavailable = serverUnavailable("diod");
    if (unavailable) throw new Error(`diod is needed: ${unavailable}`);
    const work = await Deno.makeTempDir({ prefix: "9nbd-compiled-" });
    const server = await startDiod({ dir: work });
    try {
      const binary = `${work}/9nbd`;
      const built = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", `${root}/scripts/compile.ts`, binary],
        cwd: root,
      }).output();
      assert.ok(built.success, new TextDecoder().decode(built.stderr));
      const image = crypto.getRandomValues(new Uint8Array(65536));
      await Deno.writeFile(`${work}/img`, image);
      const spec = server.specFor("img");
      const run = async (args: string[]) => {
        const out = await new Deno.Command(binary, { args, stdout: "piped", stderr: "piped" })
          .output();
        return { code: out.code, stdout: out.stdout, text: new TextDecoder().decode(out.stdout) };
      };
      const version = await run(["--version"]);
      assert.equal(version.text, (await runCli(["--version"])).text);
      const info = await run(["info", "--json", spec]);
      assert.equal(info.code, 0);
      assert.equal(JSON.parse(info.text).sizeBytes, image.length);
      const cat = await run(["cat", spec]);
      assert.deepEqual(cat.stdout, image);
    } finally {
      await server.stop();
      await Deno.remove(work, { recursive: true });
    }
  },
});
