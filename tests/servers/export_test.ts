/**
 * Real-client tier for `9nbd export`: diodcat, a 9P2000.L client written
 * by someone else (diod's C library), reads an image through our server and
 * the bytes must match.
 *
 * @module
 */

import assert from "node:assert/strict";
import { startExportServer } from "../../lib/server/export.ts";
import { sha256Hex } from "../support/cli.ts";
import { skipTier } from "../support/tier.ts";

const IMAGE_BYTES = 16 * 1024 * 1024 + 777;

function findDiodcat(): string | null {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/sbin", "/sbin"];
  for (const dir of dirs.filter((d) => d !== "")) {
    try {
      if (Deno.statSync(`${dir}/diodcat`).isFile) return `${dir}/diodcat`;
    } catch {
      // Not here.
    }
  }
  return null;
}

Deno.test({
  name: "diodcat reads an image served by 9nbd export, byte for byte",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const diodcat = findDiodcat();
    if (diodcat === null) {
      skipTier("servers (export/diodcat)", "diodcat is not installed (Debian package diod)");
      return;
    }
    const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "9nbd-export-diodcat-" }));
    const image = crypto.getRandomValues(new Uint8Array(65536));
    const whole = new Uint8Array(IMAGE_BYTES);
    for (let at = 0; at < whole.length; at += image.length) {
      whole.set(image.subarray(0, Math.min(image.length, whole.length - at)), at);
      image.reverse();
    }
    await Deno.writeFile(`${dir}/disk.img`, whole);
    const expected = await sha256Hex(whole);
    const server = await startExportServer({
      paths: [dir],
      listen: { kind: "tcp", host: "127.0.0.1", port: 0 },
    });
    const port = server.address.kind === "tcp" ? server.address.port : 0;
    try {
      for (const msize of [8192, 65536]) {
        await t.step(`at msize ${msize}`, async () => {
          const output = await new Deno.Command(diodcat, {
            args: ["-s", `127.0.0.1:${port}`, "-m", String(msize), "-a", dir, "disk.img"],
            stdout: "piped",
            stderr: "piped",
          }).output();
          const stderr = new TextDecoder().decode(output.stderr);
          assert.equal(output.code, 0, `diodcat failed: ${stderr}`);
          assert.equal(output.stdout.length, IMAGE_BYTES, stderr);
          assert.equal(await sha256Hex(output.stdout), expected);
        });
      }
      await t.step("a missing file is an error, not empty output", async () => {
        const output = await new Deno.Command(diodcat, {
          args: ["-s", `127.0.0.1:${port}`, "-a", dir, "missing.img"],
          stdout: "piped",
          stderr: "piped",
        }).output();
        assert.notEqual(output.code, 0);
        assert.equal(output.stdout.length, 0);
      });
    } finally {
      await server.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
