/**
 * Real-server tier: the 9P client and the `info`/`cat` commands against
 * diod and nfs-ganesha, each started on a free loopback port in a temp dir.
 *
 * @module
 */

import assert from "node:assert/strict";
import { ExitCode } from "../../lib/errors.ts";
import { Image } from "../../lib/image.ts";
import { parseSpec } from "../../lib/spec.ts";
import { runCli, sha256Hex } from "../support/cli.ts";
import {
  type RunningServer,
  type ServerKind,
  serverUnavailable,
  startDiod,
  startGanesha,
} from "../../tools/servers.ts";
import { skipTier } from "../support/tier.ts";
import { randomBytes } from "../../tools/random.ts";

const IMAGE_BYTES = 64 * 1024 * 1024;

const starters: Record<ServerKind, typeof startDiod> = { diod: startDiod, ganesha: startGanesha };

for (const kind of ["diod", "ganesha"] as const) {
  Deno.test({
    name: `${kind}: info, cat, concurrent reads, writes and errors work against a real server`,
    sanitizeResources: false,
    sanitizeOps: false,
    async fn(t) {
      const unavailable = serverUnavailable(kind);
      if (unavailable) {
        skipTier(`servers (${kind})`, unavailable);
        return;
      }
      const dir = await Deno.makeTempDir({ prefix: `9nbd-${kind}-` });
      const image = randomBytes(IMAGE_BYTES, kind === "diod" ? 7 : 11);
      await Deno.writeFile(`${dir}/image.img`, image);
      // A writable scratch image; the server tier never writes the read-only one.
      await Deno.writeFile(`${dir}/scratch.img`, randomBytes(3 * 1024 * 1024 + 333, 3));
      let server: RunningServer | undefined;
      try {
        server = await starters[kind]({ dir });
        const spec = server.specFor("image.img");
        const expectedSha = await sha256Hex(image);

        await t.step("info --json reports the image size and a negotiated msize", async () => {
          const result = await runCli(["info", "--json", spec]);
          assert.equal(result.code, 0, result.stderr);
          const facts = JSON.parse(result.text);
          assert.equal(facts.sizeBytes, IMAGE_BYTES);
          assert.ok(facts.msize >= 4096 && facts.msize <= (1 << 20) + 24, `msize ${facts.msize}`);
          assert.equal(facts.server, `${server!.host}:${server!.port}`);
        });

        await t.step("info prints a readable summary", async () => {
          const result = await runCli(["info", spec]);
          assert.equal(result.code, 0, result.stderr);
          assert.match(result.text, new RegExp(`size +${IMAGE_BYTES} bytes \\(64\\.0 MiB\\)`));
        });

        await t.step("cat of the 64 MiB image matches its sha256", async () => {
          const result = await runCli(["cat", spec]);
          assert.equal(result.code, 0, result.stderr);
          assert.equal(result.stdout.length, IMAGE_BYTES);
          assert.equal(await sha256Hex(result.stdout), expectedSha);
        });

        await t.step("cat --offset --length streams exactly that range", async () => {
          const result = await runCli(["cat", "--offset", "1000001", "--length", "777777", spec]);
          assert.equal(result.code, 0, result.stderr);
          assert.deepEqual(result.stdout, image.subarray(1000001, 1000001 + 777777));
        });

        await t.step("32 concurrent readers over 4 sessions get correct bytes", async () => {
          const handles = await Promise.all(
            Array.from({ length: 4 }, () => Image.open(parseSpec(spec))),
          );
          try {
            let seed = 12345;
            const next = () => (seed = (seed * 1103515245 + 12345) >>> 0);
            await Promise.all(Array.from({ length: 32 }, async (_, reader) => {
              const handle = handles[reader % handles.length];
              for (let i = 0; i < 8; i++) {
                const length = 1 + (next() % (512 * 1024));
                const offset = next() % (IMAGE_BYTES - length);
                const dest = new Uint8Array(length);
                await handle.read(offset, dest);
                assert.ok(
                  dest.every((b, j) => b === image[offset + j]),
                  `reader ${reader}: ${length} bytes at ${offset} differ`,
                );
              }
            }));
          } finally {
            await Promise.all(handles.map((h) => h.close()));
          }
        });

        await t.step("writes at odd offsets and lengths read back exactly", async () => {
          const scratchPath = `${dir}/scratch.img`;
          const expected = await Deno.readFile(scratchPath);
          const handle = await Image.open(parseSpec(server!.specFor("scratch.img")), {
            writable: true,
          });
          try {
            const writes = [[1, 1], [4095, 3], [65_511, 70_001], [1_000_003, 999_999], [
              expected.length - 17,
              17,
            ]];
            await Promise.all(writes.map(async ([offset, length], i) => {
              const data = randomBytes(length, 100 + i);
              expected.set(data, offset);
              await handle.write(offset, data);
            }));
            await handle.flush();
            const back = new Uint8Array(expected.length);
            await handle.read(0, back);
            assert.deepEqual(back, expected);
          } finally {
            await handle.close();
          }
          assert.deepEqual(await Deno.readFile(scratchPath), expected);
        });

        await t.step("a host name and an IPv6 literal reach the server", async () => {
          const byName = spec.replace(/^127\.0\.0\.1:/, "localhost:");
          const named = await runCli(["info", "--json", byName]);
          assert.equal(named.code, 0, named.stderr);
          assert.equal(JSON.parse(named.text).sizeBytes, IMAGE_BYTES);
          // diod listens on IPv4 only; nfs-ganesha listens on every address.
          if (kind === "ganesha") {
            const v6 = await runCli(["info", "--json", spec.replace(/^127\.0\.0\.1:/, "[::1]:")]);
            assert.equal(v6.code, 0, v6.stderr);
            assert.equal(JSON.parse(v6.text).server, `[::1]:${server!.port}`);
          }
        });

        await t.step("a wrong path is a clear not-found error with exit code 4", async () => {
          const result = await runCli(["info", server!.specFor("no-such.img")]);
          assert.equal(result.code, ExitCode.notFound, result.stderr);
          assert.match(
            result.stderr,
            /^9nbd: server .*: .*No such file or directory \(ENOENT\)\n$/,
          );
        });

        await t.step("a wrong port is a clear connection error with exit code 1", async () => {
          const wrong = spec.replace(`:${server!.port}:`, `:1:`);
          const result = await runCli(["info", wrong, "--timeout", "2"]);
          assert.equal(result.code, ExitCode.failure, result.stderr);
          assert.match(
            result.stderr,
            /^9nbd: server 127\.0\.0\.1:1: connect: connection refused\n$/,
          );
        });

        await t.step("a refused access is a clear permission error with exit code 3", async () => {
          // diod refuses an aname outside its export (EPERM); ganesha lets
          // nobody attach but not look inside the root-only export (EACCES).
          const outside = await Deno.makeTempDir({ prefix: "9nbd-outside-" });
          try {
            await Deno.writeFile(`${outside}/x.img`, new Uint8Array(4096));
            const args = kind === "diod"
              ? [`${server!.host}:${server!.port}:${outside}/x.img`]
              : ["--uid", "65534", "--uname", "nobody", spec];
            await Deno.chmod(dir, 0o700);
            const result = await runCli(["info", ...args]);
            assert.equal(result.code, ExitCode.permission, result.stderr);
            assert.match(result.stderr, /^9nbd: server .*\((EACCES|EPERM)\)\n$/);
          } finally {
            await Deno.remove(outside, { recursive: true });
          }
        });
      } finally {
        await server?.stop();
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}
