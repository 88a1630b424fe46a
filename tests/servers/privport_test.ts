/**
 * `--privport` against servers that trust only privileged source ports:
 * diod with an export marked `privport`, nfs-ganesha with `PrivilegedPort =
 * true`, and `9nbd export --privport`. Without the option each refuses;
 * with it 9nbd connects from a port below 1024 and reads every byte.
 *
 * @module
 */

import assert from "node:assert/strict";
import { ExitCode } from "../../lib/errors.ts";
import { randomBytes } from "../../tools/random.ts";
import {
  type RunningServer,
  type ServerKind,
  serverUnavailable,
  startDiod,
  startGanesha,
} from "../../tools/servers.ts";
import { runCli, sha256Hex, startExportCli } from "../support/cli.ts";
import { skipTier } from "../support/tier.ts";

const IMAGE_BYTES = 2 * 1024 * 1024 + 77;

const starters: Record<ServerKind, typeof startDiod> = { diod: startDiod, ganesha: startGanesha };

/**
 * `9nbd cat SPEC` without --privport is refused with `code` (diod: EPERM,
 * nfs-ganesha: EACCES, 9nbd export: the connection closed); with it, the
 * bytes are the image's.
 */
async function refusedThenRead(spec: string, expected: string, code: number): Promise<void> {
  const without = await runCli(["cat", "--timeout", "5", spec]);
  assert.equal(without.code, code, `refused without --privport: ${without.stderr}`);
  assert.equal(without.stdout.length, 0);
  assert.equal(without.stderr.trim().split("\n").length, 1, without.stderr);
  const withPort = await runCli(["cat", "--privport", spec]);
  assert.equal(withPort.code, 0, withPort.stderr);
  assert.equal(await sha256Hex(withPort.stdout), expected);
}

for (const kind of ["diod", "ganesha"] as const) {
  Deno.test({
    name:
      `${kind} trusting only privileged ports refuses 9nbd without --privport and serves it with`,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const unavailable = serverUnavailable(kind) ??
        (Deno.uid() !== 0 ? "binding a port below 1024 needs root" : null);
      if (unavailable) {
        skipTier(`servers (${kind} privport)`, unavailable);
        return;
      }
      const dir = await Deno.makeTempDir({ prefix: `9nbd-privport-${kind}-` });
      const image = randomBytes(IMAGE_BYTES, 51);
      await Deno.writeFile(`${dir}/disk.img`, image);
      let server: RunningServer | undefined;
      try {
        server = await starters[kind]({ dir, privilegedPort: true });
        await refusedThenRead(
          server.specFor("disk.img"),
          await sha256Hex(image),
          ExitCode.permission,
        );
      } finally {
        await server?.stop();
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

Deno.test({
  name:
    "9nbd export --privport refuses 9nbd without --privport (exit 1, connection closed) and serves it with",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    if (Deno.uid() !== 0) {
      skipTier("servers (export privport)", "binding a port below 1024 needs root");
      return;
    }
    const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "9nbd-privport-export-" }));
    const image = randomBytes(IMAGE_BYTES, 52);
    await Deno.writeFile(`${dir}/disk.img`, image);
    const exporter = await startExportCli(["--privport", dir]);
    try {
      const port = exporter.port;
      const spec = `127.0.0.1:${port}:${dir}/disk.img`;
      await refusedThenRead(spec, await sha256Hex(image), ExitCode.failure);
    } finally {
      await exporter.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
