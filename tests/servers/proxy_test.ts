/**
 * Real-client tier for `9nbd proxy`: standard NBD clients (libnbd's nbdinfo
 * and nbdcopy, qemu-img, fio's nbd engine) against `9nbd proxy` → diod.
 *
 * The proxy runs as a user would run it: `deno run -A main.ts proxy ...`
 * (set NBD9_MAIN to another entry point to test a build that wires the
 * command differently).
 *
 * @module
 */

import assert from "node:assert/strict";
import { mainTs, sha256Hex } from "../support/cli.ts";
import { type RunningServer, serverUnavailable, startDiod } from "../../tools/servers.ts";
import { skipTier } from "../support/tier.ts";
import { randomBytes } from "../../tools/random.ts";

const IMAGE_BYTES = 48 * 1024 * 1024 + 4096;
const SCRATCH_BYTES = 16 * 1024 * 1024;

/** The clients this tier drives, and the Debian package each comes from. */
const clients: Record<string, string> = {
  nbdinfo: "libnbd-bin",
  nbdcopy: "libnbd-bin",
  "qemu-img": "qemu-utils",
  fio: "fio",
};

async function missingClient(): Promise<string | null> {
  for (const [tool, pkg] of Object.entries(clients)) {
    try {
      await new Deno.Command(tool, { args: ["--version"], stdout: "null", stderr: "null" })
        .output();
    } catch {
      return `${tool} is not installed (Debian package ${pkg})`;
    }
  }
  return null;
}

/** A running `9nbd proxy`. */
interface RunningProxy {
  socket: string;
  uri: string;
  /** SIGTERM and wait; resolves with the exit code and stderr. */
  stop(): Promise<{ code: number; stderr: string }>;
}

/** Start `9nbd proxy ARGS --listen unix:SOCKET` and wait for its "serving" line. */
async function startProxy(socket: string, args: string[]): Promise<RunningProxy> {
  const entry = Deno.env.get("NBD9_MAIN") ?? mainTs;
  // The project's config (its import map) applies even to an entry point outside the tree.
  const config = new URL("../../deno.json", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--quiet",
      "--config",
      config,
      entry,
      "proxy",
      ...args,
      "--listen",
      `unix:${socket}`,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderrText = new Response(child.stderr).text();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let stdout = "";
  const ready = (async () => {
    while (!stdout.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      stdout += value;
    }
    return stdout;
  })();
  const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
  const first = await ready;
  clearTimeout(timer);
  if (!/^serving .* on unix:/.test(first)) {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    await child.status;
    throw new Error(`9nbd proxy did not start: ${first}${await stderrText}`);
  }
  // Keep draining stdout so the child never blocks on a full pipe.
  const drained = (async () => {
    while (!(await reader.read()).done) { /* discard */ }
  })();
  return {
    socket,
    uri: `nbd+unix:///?socket=${socket}`,
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      const status = await child.status;
      await drained;
      return { code: status.code, stderr: await stderrText };
    },
  };
}

/** Run a client; fail with its output if it fails. */
async function run(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout);
  const errors = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `${cmd} ${args.join(" ")} exited ${out.code}:\n${text}${errors}`);
  return text;
}

async function fileSha256(path: string): Promise<string> {
  return await sha256Hex(await Deno.readFile(path));
}

Deno.test({
  name: "proxy: nbdinfo, nbdcopy, qemu-img and fio work against 9nbd proxy over diod",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const unavailable = serverUnavailable("diod") ?? await missingClient();
    if (unavailable) {
      skipTier("servers (proxy)", unavailable);
      return;
    }
    const dir = await Deno.makeTempDir({ prefix: "9nbd-proxy-" });
    const work = await Deno.makeTempDir({ prefix: "9nbd-proxy-out-" });
    const image = randomBytes(IMAGE_BYTES, 21);
    await Deno.writeFile(`${dir}/image.img`, image);
    await Deno.writeFile(`${dir}/scratch.img`, new Uint8Array(SCRATCH_BYTES));
    const imageSha = await sha256Hex(image);
    let server: RunningServer | undefined;
    let ro: RunningProxy | undefined;
    try {
      server = await startDiod({ dir });
      ro = await startProxy(`${work}/ro.sock`, [server.specFor("image.img"), "--name", "disk"]);
      const uri = `nbd+unix:///disk?socket=${ro.socket}`;

      await t.step("nbdinfo shows the size, read-only and multi-conn", async () => {
        const info = JSON.parse(await run("nbdinfo", ["--json", uri]));
        assert.equal(info.protocol, "newstyle-fixed");
        const [exp] = info.exports;
        assert.equal(exp["export-size"], IMAGE_BYTES);
        assert.equal(exp.is_read_only, true);
        assert.equal(exp.can_multi_conn, true);
        assert.equal(exp.block_size_minimum, 1);
        assert.equal(exp.block_size_preferred, 4096);
        assert.equal(exp.block_size_maximum, 32 * 1024 * 1024);
        // The default (empty) name is the same export.
        const byDefault = JSON.parse(await run("nbdinfo", ["--json", ro!.uri]));
        assert.equal(byDefault.exports[0]["export-size"], IMAGE_BYTES);
      });

      await t.step("nbdinfo for an unknown export name fails", async () => {
        const out = await new Deno.Command("nbdinfo", {
          args: [`nbd+unix:///other?socket=${ro!.socket}`],
          stdout: "null",
          stderr: "piped",
        }).output();
        assert.notEqual(out.code, 0);
        assert.match(
          new TextDecoder().decode(out.stderr),
          /No such file or directory for export: other/, /* ERR_UNKNOWN as libnbd says it */
        );
      });

      await t.step("nbdcopy (several connections) copies bytes matching the sha256", async () => {
        await run("nbdcopy", ["--connections=4", uri, `${work}/copy.img`]);
        assert.equal(await fileSha256(`${work}/copy.img`), imageSha);
        await Deno.remove(`${work}/copy.img`);
      });

      await t.step("qemu-img info and convert read the export", async () => {
        const info = JSON.parse(
          await run("qemu-img", ["info", "--output=json", `nbd:unix:${ro!.socket}`]),
        );
        assert.equal(info["virtual-size"], IMAGE_BYTES);
        await run("qemu-img", [
          "convert",
          "-f",
          "raw",
          "-O",
          "raw",
          `nbd:unix:${ro!.socket}`,
          `${work}/converted.img`,
        ]);
        assert.equal(await fileSha256(`${work}/converted.img`), imageSha);
        await Deno.remove(`${work}/converted.img`);
      });

      await t.step(
        "a short fio randread job with the nbd engine completes without errors",
        async () => {
          await run("fio", [
            "--name=randread",
            "--ioengine=nbd",
            `--uri=${ro!.uri}`,
            "--rw=randread",
            "--bs=4k",
            "--iodepth=16",
            `--size=${IMAGE_BYTES}`,
            "--runtime=3",
            "--time_based",
            "--output-format=json",
            `--output=${work}/fio.json`,
          ]);
          const result = JSON.parse(await Deno.readTextFile(`${work}/fio.json`));
          const job = result.jobs[0];
          assert.equal(job.error, 0);
          assert.ok(job.read.io_bytes > 0, "fio read nothing");
          assert.equal(job.read.short_ios ?? 0, 0);
        },
      );

      await t.step("a --rw proxy takes writes from nbdcopy that land in the image", async () => {
        const rw = await startProxy(`${work}/rw.sock`, [server!.specFor("scratch.img"), "--rw"]);
        try {
          const data = randomBytes(SCRATCH_BYTES, 5);
          await Deno.writeFile(`${work}/in.img`, data);
          await run("nbdcopy", [`${work}/in.img`, rw.uri]);
          assert.equal(await fileSha256(`${dir}/scratch.img`), await sha256Hex(data));
        } finally {
          const { code, stderr } = await rw.stop();
          assert.equal(code, 0, stderr);
        }
      });

      await t.step("SIGTERM stops the proxy with exit 0 and removes its socket", async () => {
        const { code, stderr } = await ro!.stop();
        ro = undefined;
        assert.equal(code, 0, stderr);
        await assert.rejects(Deno.lstat(`${work}/ro.sock`), Deno.errors.NotFound);
      });
    } finally {
      await ro?.stop();
      await server?.stop();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(work, { recursive: true });
    }
  },
});
