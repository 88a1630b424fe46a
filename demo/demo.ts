/**
 * `deno task demo`: the main job on an embedded default, with a readable
 * transcript. Build a small ext4 image from a sample tree, serve it with
 * `9nbd export` on loopback, attach it, mount it read-only, show a few
 * files, restart the server in the middle of reading to show that no error
 * reaches the reader, then unmount, detach and stop the server.
 *
 * Where this kernel has no NBD driver (or we are not root) it says so in
 * one line and runs the same demo inside the test VM with Debian's kernel.
 *
 * It first makes sure the Debian packages it needs (tools/packages.ts) are
 * there: as root on Debian it installs what is missing, saying so in one line.
 *
 * Exit status: 0 the demo ran and no error reached the reader; 1 a step of
 * the demo failed (one line says which); 3 it cannot run here: something it
 * needs is missing and cannot be installed (not root, not Debian, no package
 * source) or the VM cannot start (one line says what to install or fix).
 *
 * @module
 */

import { createHash } from "node:crypto";
import { v8FlagsArgument } from "../lib/runtime.ts";
import {
  type DebianPackage,
  DEMO_PACKAGES,
  ensurePackages,
  VM_PACKAGES,
} from "../tools/packages.ts";

const repo = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const mainTs = `${repo}/main.ts`;
const inGuest = Deno.args.includes("--here");

function say(line: string): void {
  console.log(`demo: ${line}`);
}

/** The demo cannot run on this machine as it is (exit 3), as opposed to a step that failed. */
class CannotRun extends Error {
  override name = "CannotRun";
}

/** Installs what is missing of `packages` or throws {@linkcode CannotRun} saying what to install. */
async function ensure(packages: readonly DebianPackage[], purpose: string): Promise<void> {
  const ensured = await ensurePackages("demo", packages, purpose);
  if (!ensured.ok) throw new CannotRun(ensured.reason);
}

/** Show a command as a user would type it (`9nbd ...` rather than `deno run ... main.ts`). */
function shown(command: string[]): void {
  const at = command.indexOf(mainTs);
  const words = at >= 0 ? ["9nbd", ...command.slice(at + 1)] : command;
  console.log(`  $ ${words.join(" ")}`);
}

/** Run a command, echo it, print its output indented; throw if it fails. */
async function run(command: string[], options: { quiet?: boolean } = {}): Promise<string> {
  shown(command);
  const output = await new Deno.Command(command[0], {
    args: command.slice(1),
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
  if (!options.quiet && text.trim()) console.log(text.trimEnd().replace(/^/gm, "    "));
  if (!output.success) throw new Error(`${command.join(" ")} failed (exit ${output.code})`);
  return text;
}

function nbd9(...args: string[]): string[] {
  return [Deno.execPath(), "run", "-A", "--quiet", v8FlagsArgument(), mainTs, ...args];
}

/** Can this machine attach NBD devices itself? */
async function nbdHere(): Promise<string | null> {
  if (Deno.uid() !== 0) return "not running as root";
  const present = () => {
    try {
      return Deno.statSync("/dev/nbd0").isBlockDevice;
    } catch {
      return false;
    }
  };
  if (present()) return null;
  try {
    await new Deno.Command("modprobe", { args: ["nbd"], stdout: "null", stderr: "null" }).output();
  } catch {
    // No modprobe: the device check below says what matters.
  }
  return present() ? null : "this kernel has no NBD driver";
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/**
 * Waits until `port` accepts connections. The bound is generous: in the VM (TCG, on a machine
 * that may be busy) a cold `deno run` of 9nbd can take many seconds before it listens.
 */
async function waitPort(port: number, timeoutMs = 60_000): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; Date.now() < deadline;) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`nothing listens on 127.0.0.1:${port}`);
}

function startServer(port: number, image: string): Deno.ChildProcess {
  const command = nbd9("export", "--listen", `127.0.0.1:${port}`, image);
  shown([...command, "&"]);
  return new Deno.Command(command[0], {
    args: command.slice(1),
    stdout: "null",
    stderr: "null",
  }).spawn();
}

/** Sample tree: a small "root file system" of text files with known contents. */
async function makeTree(dir: string): Promise<Map<string, string>> {
  const sums = new Map<string, string>();
  const write = async (path: string, text: string) => {
    const full = `${dir}/${path}`;
    await Deno.mkdir(full.slice(0, full.lastIndexOf("/")), { recursive: true });
    await Deno.writeTextFile(full, text);
    sums.set(path, createHash("sha256").update(text).digest("hex"));
  };
  await write("etc/hostname", "node0042\n");
  await write("etc/motd", "Booted from a 9P-served image by 9nbd.\n");
  await write("README", "This file system lives on a 9P server and is read through /dev/nbd.\n");
  for (let i = 0; i < 300; i++) {
    const line = `file ${i}: ${
      "the quick brown fox jumps over the lazy dog ".repeat(1 + i % 40)
    }\n`;
    await write(`usr/share/doc/pkg${i % 30}/file${i}.txt`, line.repeat(1 + (i * 7) % 50));
  }
  return sums;
}

async function readAll(mount: string, sums: Map<string, string>): Promise<number> {
  let errors = 0;
  for (const [path, sum] of sums) {
    try {
      const bytes = await Deno.readFile(`${mount}/${path}`);
      if (createHash("sha256").update(bytes).digest("hex") !== sum) errors++;
    } catch {
      errors++;
    }
  }
  return errors;
}

async function demoHere(): Promise<void> {
  // A short, readable path for the transcript.
  const work = `${Deno.env.get("TMPDIR") ?? "/tmp"}/9nbd-demo-${Deno.pid}`;
  await Deno.mkdir(work, { recursive: true });
  const image = `${work}/demo.img`;
  const mount = `${work}/mnt`;
  let server: Deno.ChildProcess | undefined;
  let device: string | undefined;
  let mounted = false;
  try {
    say("building a small ext4 image from a sample tree (303 files)");
    const sums = await makeTree(`${work}/tree`);
    await run(["mkfs.ext4", "-q", "-d", `${work}/tree`, image, "16M"]);

    const port = freePort();
    say(`serving it read-only with the built-in 9P server on 127.0.0.1:${port}`);
    server = startServer(port, image);
    await waitPort(port);

    say("attaching it as a block device");
    const spec = `127.0.0.1:${port}:${image}`;
    const attached = await run(nbd9("attach", spec, "auto"));
    device = /^(\/dev\/nbd[0-9]+) attached/m.exec(attached)?.[1];
    if (!device) throw new Error(`could not tell which device was attached: ${attached}`);
    await Deno.mkdir(mount);
    await run(["mount", "-o", "ro", device, mount]);
    mounted = true;
    await run(["ls", mount]);
    await run(["cat", `${mount}/etc/hostname`, `${mount}/etc/motd`]);
    await run(nbd9("list"));

    say("reading every file, dropping the page cache before each pass so reads reach the server;");
    say("meanwhile the server is killed (kill -9) and restarted 2 s later");
    let stop = false;
    let passes = 0;
    let errors = 0;
    const reader = (async () => {
      while (!stop || passes < 3) {
        await Deno.writeTextFile("/proc/sys/vm/drop_caches", "3").catch(() => {});
        errors += await readAll(mount, sums);
        passes++;
      }
    })();
    await new Promise((r) => setTimeout(r, 500));
    say(`killing the server (pid ${server.pid}) in the middle of reading`);
    server.kill("SIGKILL");
    await server.status;
    await new Promise((r) => setTimeout(r, 2000));
    say("restarting the server");
    server = startServer(port, image);
    await waitPort(port);
    stop = true;
    await reader;
    say(
      `the reader made ${passes} passes over ${sums.size} files while the server was killed ` +
        `and restarted: ${errors} errors`,
    );
    if (errors > 0) throw new Error(`${errors} read errors reached the reader`);
    const log = await Deno.readTextFile(`/run/9nbd/${device.slice(5)}.log`).catch(() => "");
    say("what the daemon logged:");
    for (const line of log.trimEnd().split("\n")) console.log(`    ${line}`);
    await run(nbd9("list"));

    say("cleaning up");
    await run(["umount", mount]);
    mounted = false;
    await run(nbd9("detach", device));
    device = undefined;
    server.kill("SIGTERM");
    await server.status;
    server = undefined;
    const left = await run(nbd9("list"));
    if (!left.includes("no devices attached")) throw new Error("an attachment was left behind");
    say("done: no error reached the reader while the server restarted; nothing left behind");
  } finally {
    if (mounted) await run(["umount", "-l", mount], { quiet: true }).catch(() => {});
    if (device) await run(nbd9("detach", device), { quiet: true }).catch(() => {});
    if (server) {
      try {
        server.kill("SIGKILL");
      } catch { /* already gone */ }
      await server.status;
    }
    await Deno.remove(work, { recursive: true }).catch(() => {});
  }
}

async function demoInVm(reason: string): Promise<void> {
  say(`${reason}: running the same demo inside a VM with Debian's kernel`);
  await ensure(VM_PACKAGES, "to run the demo in a VM");
  const { runInVm, vmUnavailable } = await import("../tools/vm.ts");
  const unavailable = await vmUnavailable();
  if (unavailable) throw new CannotRun(`the VM cannot run: ${unavailable}`);
  // The guest sees the host's Deno cache (read-only) and runs under TCG: compiling 9nbd once
  // here saves the guest doing it, slowly, every run of a fresh checkout.
  const [deno, ...warm] = nbd9("--version");
  await new Deno.Command(deno, { args: warm, stdout: "null", stderr: "null" }).output();
  // The demo's exit status is the script's, which the VM reports.
  const script = [
    "modprobe nbd; modprobe ext4",
    `cd ${JSON.stringify(repo)}`,
    "deno run -A demo/demo.ts --here",
  ].join("\n");
  const timeoutMs = 300_000;
  const run = await runInVm(script, { timeoutMs });
  // The guest's transcript, without the console's boot noise.
  for (const line of run.log.split("\n")) {
    if (/^(demo:| {2})/.test(line)) console.log(line.replace(/\r$/, ""));
  }
  if (run.timedOut) throw new Error(`the VM did not finish within ${timeoutMs / 1000} s`);
  if (run.exitCode !== 0) throw new Error(`the demo failed in the VM (exit ${run.exitCode})`);
}

try {
  // In the VM the host has already checked the packages (the guest's root is the host's).
  if (!inGuest) await ensure(DEMO_PACKAGES, "to build and attach the demo's image");
  const reason = inGuest ? null : await nbdHere();
  if (reason) await demoInVm(reason);
  else await demoHere();
} catch (err) {
  if (err instanceof CannotRun) {
    console.error(`demo: cannot run here: ${err.message}`);
    Deno.exit(3);
  }
  console.error(`demo: FAILED: ${err instanceof Error ? err.message : err}`);
  Deno.exit(1);
}
