/**
 * MUNGE authentication against the real components: munged started by the
 * test with a key made for it (a second one with another key), libmunge
 * through Deno FFI, diod requiring authentication (its default), `9nbd
 * export --auth munge`, and diodcat and `9nbd` as clients of each. A wrong
 * key, a stopped munged and an unauthenticated client are refused, each with
 * a line that says why and exit code 3. (Reconnect and failover with fresh
 * credentials: failover_diod_test.ts.)
 *
 * diod and diodcat reach munged only at libmunge's default socket path, so
 * they run in a private mount namespace where the test's munged is there
 * (`withMunged` in tools/servers.ts); a munged the machine runs is left alone.
 *
 * @module
 */

import assert from "node:assert/strict";
import { relative } from "node:path";
import { ExitCode } from "../../lib/errors.ts";
import { libmungeClient, MungeError, MungeStatus } from "../../lib/kernel/munge.ts";
import { findProgram } from "../../tools/packages.ts";
import { randomBytes } from "../../tools/random.ts";
import {
  freePort,
  mungeUnavailable,
  type RunningMunged,
  type RunningServer,
  serverUnavailable,
  startDiod,
  startMunged,
  withMunged,
} from "../../tools/servers.ts";
import { runCli, sha256Hex, startExportCli } from "../support/cli.ts";
import { skipTier } from "../support/tier.ts";

const IMAGE_BYTES = 4 * 1024 * 1024 + 513;

/** Why this file cannot run here, or null. */
function unavailable(): string | null {
  return mungeUnavailable() ?? serverUnavailable("diod") ??
    (findProgram("diodcat") === null ? "diodcat is not installed (Debian package diod)" : null);
}

/** diodcat `-s SERVER -a ANAME NAME` with `munged` at libmunge's default path. */
async function diodcat(
  munged: RunningMunged,
  server: string,
  aname: string,
  name: string,
): Promise<{ code: number; stdout: Uint8Array; stderr: string }> {
  const command = withMunged(munged, findProgram("diodcat")!, ["-s", server, "-a", aname, name]);
  const out = await new Deno.Command(command.binary, {
    args: command.args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: out.stdout, stderr: new TextDecoder().decode(out.stderr) };
}

/** `9nbd cat` exits 3 with one line matching `pattern`, and writes nothing. */
async function refused(args: string[], pattern: RegExp): Promise<void> {
  const result = await runCli(["cat", ...args]);
  assert.equal(result.code, ExitCode.permission, result.stderr);
  assert.equal(result.stdout.length, 0);
  const lines = result.stderr.trim().split("\n");
  assert.equal(lines.length, 1, result.stderr);
  assert.match(lines[0], pattern);
}

Deno.test({
  name: "MUNGE with real munged, diod and 9nbd export: good credentials read, the rest is refused",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    const why = unavailable();
    if (why) {
      skipTier("servers (MUNGE)", why);
      return;
    }
    const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "9nbd-auth-" }));
    const image = randomBytes(IMAGE_BYTES, 41);
    await Deno.writeFile(`${dir}/disk.img`, image);
    const expected = await sha256Hex(image);
    const started: { stop(): Promise<void> }[] = [];
    try {
      const mungedA = await startMunged();
      started.push(mungedA);
      const mungedB = await startMunged(); // another key
      started.push(mungedB);

      await t.step(
        "libmunge over FFI: a credential decodes once, is a replay after, and is invalid under another key",
        async () => {
          const a = libmungeClient(mungedA.socket);
          const credential = await a.encode();
          assert.match(credential, /^MUNGE:[A-Za-z0-9+/=]+:$/);
          assert.deepEqual(await a.decode(credential), { uid: Deno.uid(), gid: Deno.gid() });
          await assert.rejects(
            a.decode(credential),
            (e: unknown) => e instanceof MungeError && e.status === MungeStatus.credentialReplayed,
          );
          const other = await a.encode();
          await assert.rejects(
            libmungeClient(mungedB.socket).decode(other),
            (e: unknown) => e instanceof MungeError && e.status === MungeStatus.credentialInvalid,
          );
          // A relative path is resolved against the working directory.
          const nearby = relative(Deno.cwd(), mungedA.socket);
          assert.deepEqual(await a.decode(await libmungeClient(nearby).encode()), {
            uid: Deno.uid(),
            gid: Deno.gid(),
          });
          await assert.rejects(
            libmungeClient(`${dir}/no-such.socket`).encode(),
            new RegExp(
              `^MungeError: munged is not running \\(no socket at ${dir}/no-such\\.socket\\)`,
            ),
          );
        },
      );

      const diod: RunningServer = await startDiod({ dir, auth: mungedA });
      started.push(diod);
      const diodSpec = diod.specFor("disk.img");
      const diodAddress = `${diod.host}:${diod.port}`;

      await t.step("diodcat authenticates to diod (the setup works)", async () => {
        const out = await diodcat(mungedA, diodAddress, dir, "disk.img");
        assert.equal(out.code, 0, out.stderr);
        assert.equal(await sha256Hex(out.stdout), expected);
      });

      await t.step(
        "9nbd cat (--auth auto, the default) authenticates to diod and reads every byte",
        async () => {
          const result = await runCli(["cat", "--munge-socket", mungedA.socket, diodSpec]);
          assert.equal(result.code, 0, result.stderr);
          assert.equal(await sha256Hex(result.stdout), expected);
        },
      );

      await t.step(
        "diod refuses --auth none, a credential under another key, and a missing or dead munged",
        async () => {
          await refused(
            ["--auth", "none", diodSpec],
            /requires authentication \(EPERM\), and --auth none was given/,
          );
          await refused(
            ["--munge-socket", mungedB.socket, diodSpec],
            /the server refused our MUNGE credential \(EPERM/,
          );
          await refused(
            ["--munge-socket", `${dir}/none.socket`, diodSpec],
            /requires MUNGE authentication, but munged is not running \(no socket at /,
          );
          const dead = await startMunged();
          try {
            await dead.kill();
            await refused(
              ["--munge-socket", dead.socket, diodSpec],
              /munged is not running \(its socket .* does not answer/,
            );
          } finally {
            await dead.stop();
          }
        },
      );

      // The CLI, as a user runs it: 9nbd export --auth munge.
      const exporter = await startExportCli([
        "--auth",
        "munge",
        "--munge-socket",
        mungedA.socket,
        dir,
      ]);
      started.push(exporter);
      const port = exporter.port;
      const exportSpec = `127.0.0.1:${port}:${dir}/disk.img`;

      await t.step(
        "diodcat authenticates to 9nbd export --auth munge; under another key it is refused",
        async () => {
          const good = await diodcat(mungedA, `127.0.0.1:${port}`, dir, "disk.img");
          assert.equal(good.code, 0, good.stderr);
          assert.equal(await sha256Hex(good.stdout), expected);
          const bad = await diodcat(mungedB, `127.0.0.1:${port}`, dir, "disk.img");
          assert.notEqual(bad.code, 0);
          assert.equal(bad.stdout.length, 0);
          assert.match(bad.stderr, /Operation not permitted/);
        },
      );

      await t.step(
        "9nbd authenticates to 9nbd export --auth munge; none, another key and no munged are refused",
        async () => {
          const result = await runCli(["cat", "--munge-socket", mungedA.socket, exportSpec]);
          assert.equal(result.code, 0, result.stderr);
          assert.equal(await sha256Hex(result.stdout), expected);
          await refused(["--auth", "none", exportSpec], /requires authentication.*--auth none/);
          await refused(
            ["--munge-socket", mungedB.socket, exportSpec],
            /refused our MUNGE credential/,
          );
          await refused(["--munge-socket", `${dir}/none.socket`, exportSpec], /no socket at/);
        },
      );

      await t.step(
        "9nbd export --auth munge without munged stops at start-up: exit 3, one line",
        async () => {
          const result = await runCli([
            ...["export", "--listen", `127.0.0.1:${freePort()}`, "--auth", "munge"],
            ...["--munge-socket", `${dir}/none.socket`, dir],
          ]);
          assert.equal(result.code, ExitCode.permission, result.stderr);
          assert.match(
            result.stderr.trim(),
            /^9nbd: --auth munge: munged is not running \(no socket at .*none\.socket\)$/,
          );
        },
      );
    } finally {
      for (const thing of started.reverse()) await thing.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
