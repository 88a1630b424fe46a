/**
 * `9nbd attach`, `9nbd detach` and `9nbd list`.
 *
 * `attach` (without --foreground) starts the daemon as a detached child in
 * its own session, with stderr going to the attachment's log file, and waits
 * for one line on the child's stdout: ready, or the error that stopped it.
 * It exits 0 only when the device is usable.
 *
 * @module
 */

import { spawn } from "node:child_process";
import { openSync } from "node:fs";
import { describeError, ErrnoError, ExitCode, exitCodeFor, UsageError } from "../errors.ts";
import { ResilientImage } from "../failover/mod.ts";
import { findFreeDevice, linuxKernelNbd, listNbdDevices } from "../kernel/nbd_device.ts";
import { errnoNumber } from "../errno.ts";
import { runDaemon } from "../device/daemon.ts";
import {
  deviceName,
  kernelPid,
  listStates,
  logPath,
  processAlive,
  readState,
  removeState,
  runDir,
} from "../device/state.ts";
import { withReadAhead } from "../readahead.ts";
import { parseSpec } from "../spec.ts";
import { selfCommand } from "../runtime.ts";
import { humanBytes } from "./info.ts";
import {
  applyVerbosity,
  commonHelp,
  commonOptions,
  parse,
  parseInteger,
  parseSeconds,
  positionals,
  resilienceHelp,
  resilienceOptions,
  resilientOptions,
  serverHelp,
  serverOptions,
} from "./options.ts";

export const attachHelp = `Usage: 9nbd attach [options] SPEC [SPEC...] DEVICE

Make DEVICE (/dev/nbdN, or "auto" for the first free one) a block device
backed by the image SPEC names. Read-only unless --rw. Exits 0 once the
device is usable, leaving a daemon serving it; its log is
${runDir()}/nbdN.log. Needs root.

Several SPECs name replicas of one image on different servers, in order of
preference: when the serving one fails, the next one that holds the same
image (same size, same sampled-block fingerprint) takes over, and the block
layer sees no error. A lost server is reconnected with backoff, forever
unless --give-up-after is given. Writable attachments take one SPEC.

Options:
${resilienceHelp}
  --foreground        serve in this process until detached (systemd, debugging)
  --max-request-kb N  largest kernel request, in KiB (default 1024; the
                      kernel's own default is 128)
  --block-size BYTES  logical block size: 512, 1024, 2048 or 4096 (default 512);
                      the device size is the image size rounded down to it
${serverHelp}
${commonHelp}`;

export const detachHelp = `Usage: 9nbd detach [options] DEVICE

Flush DEVICE, disconnect it and stop its daemon. Refuses a mounted device.
Needs root.

Options:
  --wait SECONDS    how long to wait for the daemon to finish (default 30)
${commonHelp}`;

export const listHelp = `Usage: 9nbd list [--json]

Show every attached device: device, spec, server, ro/rw, size, daemon pid,
uptime and status (ok, or what is wrong).
${commonHelp}`;

const devicePattern = /^\/dev\/nbd[0-9]+$/;

function requireRoot(operation: string): void {
  if (Deno.uid() !== 0) {
    throw new ErrnoError(errnoNumber("EPERM"), operation, "needs root (CAP_SYS_ADMIN)");
  }
}

/**
 * Make sure the kernel has its NBD driver: if no /dev/nbd* exists, try
 * `modprobe nbd` once, then give up with a clear message.
 */
async function ensureNbdDriver(): Promise<void> {
  const present = async () => (await listNbdDevices()).length > 0;
  if (await present()) return;
  try {
    await new Deno.Command("modprobe", { args: ["nbd"], stdout: "null", stderr: "null" }).output();
  } catch { /* no modprobe: the check below says what is wrong */ }
  if (await present()) return;
  throw new ErrnoError(
    errnoNumber("ENODEV"),
    "attach",
    "no /dev/nbd* and `modprobe nbd` did not help: this kernel has no NBD driver",
  );
}

/** DEVICE as a /dev/nbdN path; `auto` is the first device nobody uses. */
async function resolveDevice(text: string): Promise<string> {
  if (text === "auto") {
    const free = await findFreeDevice();
    if (!free) {
      throw new ErrnoError(errnoNumber("EBUSY"), "attach auto", "every /dev/nbd* is in use");
    }
    return free.path;
  }
  if (!devicePattern.test(text)) {
    throw new UsageError(`DEVICE must be /dev/nbdN or auto, not "${text}"`);
  }
  return text;
}

/** Refuse a device someone is using. */
async function checkFree(device: string): Promise<void> {
  const owner = kernelPid(device);
  const state = await readState(device);
  if (owner !== undefined || (state && processAlive(state.pid))) {
    throw new ErrnoError(
      errnoNumber("EBUSY"),
      `attach ${device}`,
      `already attached (daemon pid ${owner ?? state?.pid}); detach it first`,
    );
  }
}

export async function attach(args: string[], out: (line: string) => void): Promise<number> {
  const { values, positionals: rest } = parse(args, {
    ...commonOptions,
    ...serverOptions,
    ...resilienceOptions,
    foreground: { type: "boolean" },
    "block-size": { type: "string" },
    "max-request-kb": { type: "string" },
  });
  if (values.help) {
    out(attachHelp);
    return 0;
  }
  if (rest.length < 2) throw new UsageError(`missing ${rest.length === 0 ? "SPEC" : "DEVICE"}`);
  const deviceText = rest[rest.length - 1];
  const specTexts = rest.slice(0, -1);
  const specs = specTexts.map(parseSpec);
  const specText = specTexts.join(" ");
  const options = resilientOptions(values, specs.length);
  const blockSizeBytes = values["block-size"]
    ? parseInteger("block-size", values["block-size"], 512, 4096)
    : 512;
  if (![512, 1024, 2048, 4096].includes(blockSizeBytes)) {
    throw new UsageError(`--block-size: ${blockSizeBytes} is not 512, 1024, 2048 or 4096`);
  }
  // One window for both sides: kernel requests served at once, and 9P
  // requests per connection.
  const maxInflight = options.maxInflight;
  const maxRequestKiB = values["max-request-kb"]
    ? parseInteger("max-request-kb", values["max-request-kb"], 4, 32768)
    : undefined;
  const readyPipe = Deno.env.get("NBD9_READY_PIPE") === "1";
  await applyVerbosity(values, readyPipe);
  requireRoot(`attach ${deviceText}`);
  await ensureNbdDriver();
  const device = await resolveDevice(deviceText);
  await checkFree(device);
  const kernel = linuxKernelNbd;

  if (!values.foreground) {
    const childArgs = [
      ...args.slice(0, args.lastIndexOf(deviceText)),
      ...args.slice(args.lastIndexOf(deviceText) + 1),
      "--foreground",
      device,
    ];
    return await startDaemon(device, childArgs, out);
  }

  // Foreground: this process is the daemon.
  const report = (line: string) => {
    if (readyPipe) {
      try {
        Deno.stdout.writeSync(new TextEncoder().encode(line + "\n"));
      } catch { /* the parent is gone */ }
    }
  };
  let reported = false;
  const image = await ResilientImage.open(specs, options).catch((err) => {
    report(`error ${exitCodeFor(err)} ${describeError(err)}`);
    reported = true;
    throw err;
  });
  try {
    await runDaemon({
      device,
      specText,
      backend: image,
      front: withReadAhead(image, options.readAhead),
      kernel,
      blockSizeBytes,
      maxInflight,
      // --connections: as many kernel sockets as 9P connections.
      kernelSockets: options.connections,
      maxRequestKiB,
      onReady: (err) => {
        if (reported) return;
        reported = true;
        if (err) report(`error ${exitCodeFor(err)} ${describeError(err)}`);
        else {
          report(`ready ${device}`);
          if (!readyPipe) out(`${device} attached`);
        }
      },
    });
  } catch (err) {
    if (!reported) report(`error ${exitCodeFor(err)} ${describeError(err)}`);
    throw err;
  }
  return ExitCode.ok;
}

/** Start the daemon in the background and wait for its verdict. */
async function startDaemon(
  device: string,
  childArgs: string[],
  out: (line: string) => void,
): Promise<number> {
  await Deno.mkdir(runDir(), { recursive: true, mode: 0o755 });
  const logFd = openSync(logPath(device), "a");
  const [exe, ...exeArgs] = selfCommand();
  const child = spawn(exe, [...exeArgs, "attach", ...childArgs], {
    detached: true,
    stdio: ["ignore", "pipe", logFd],
    env: { ...Deno.env.toObject(), NBD9_READY_PIPE: "1" },
  });
  const verdict = await new Promise<string>((resolve) => {
    let buffered = "";
    child.stdout!.on("data", (chunk: Uint8Array) => {
      buffered += new TextDecoder().decode(chunk);
      const newline = buffered.indexOf("\n");
      if (newline >= 0) resolve(buffered.slice(0, newline));
    });
    child.on("exit", (code) => resolve(`exit ${code}`));
    child.on("error", (err) => resolve(`error 1 cannot start the daemon: ${err.message}`));
  });
  child.stdout!.destroy();
  child.unref();
  if (verdict.startsWith("ready ")) {
    out(`${device} attached (daemon pid ${child.pid}, log ${logPath(device)})`);
    return ExitCode.ok;
  }
  const match = /^error (\d+) (.*)$/.exec(verdict);
  if (match) {
    console.error(`9nbd: ${match[2]}`);
    return Number(match[1]);
  }
  const tail = await Deno.readTextFile(logPath(device)).catch(() => "");
  console.error(
    `9nbd: the daemon for ${device} stopped before it was ready (${verdict}); last log lines:\n` +
      tail.trimEnd().split("\n").slice(-5).join("\n"),
  );
  return ExitCode.failure;
}

/** Mount points of `device` or its partitions. */
async function mountsOf(device: string): Promise<string[]> {
  const mounts = await Deno.readTextFile("/proc/self/mounts").catch(() => "");
  const name = deviceName(device);
  return mounts.split("\n").map((line) => line.split(" ")).filter(([source]) =>
    source === device || new RegExp(`^/dev/${name}p[0-9]+$`).test(source ?? "")
  ).map(([, target]) => target);
}

export async function detach(args: string[], out: (line: string) => void): Promise<number> {
  const { values, positionals: rest } = parse(args, {
    ...commonOptions,
    wait: { type: "string" },
  });
  if (values.help) {
    out(detachHelp);
    return 0;
  }
  await applyVerbosity(values);
  const [device] = positionals(rest, ["DEVICE"]);
  if (!devicePattern.test(device)) {
    throw new UsageError(`DEVICE must be /dev/nbdN, not "${device}"`);
  }
  const waitMs = parseSeconds("wait", values.wait ?? "30", 1) * 1000;
  requireRoot(`detach ${device}`);
  const mounted = await mountsOf(device);
  if (mounted.length > 0) {
    throw new ErrnoError(
      errnoNumber("EBUSY"),
      `detach ${device}`,
      `mounted on ${mounted.join(", ")}; unmount it first`,
    );
  }
  const state = await readState(device);
  const owner = kernelPid(device);
  if (state && processAlive(state.pid)) {
    Deno.kill(state.pid, "SIGTERM");
    const deadline = performance.now() + waitMs;
    while (processAlive(state.pid)) {
      if (performance.now() > deadline) {
        throw new ErrnoError(
          errnoNumber("ETIMEDOUT"),
          `detach ${device}`,
          `daemon pid ${state.pid} did not finish in ${waitMs / 1000} s; see ${state.log}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    await removeState(device);
    out(`${device} detached`);
    return ExitCode.ok;
  }
  if (owner !== undefined || state) {
    // The daemon is gone (crashed, killed) but the kernel or our state still
    // holds the device: release both.
    const kernel = linuxKernelNbd;
    if (owner !== undefined) {
      const fd = kernel.openDevice(device);
      try {
        await kernel.disconnect(fd);
        kernel.clearSock(fd);
      } finally {
        kernel.closeFd(fd);
      }
    }
    await removeState(device);
    out(`${device} detached (its daemon was not running)`);
    return ExitCode.ok;
  }
  throw new ErrnoError(errnoNumber("ENXIO"), `detach ${device}`, "not attached");
}

function formatUptime(seconds: number): string {
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${Math.floor(seconds % 60)}s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h${Math.floor(seconds % 3600 / 60)}m`;
  return `${Math.floor(seconds / 86400)}d${Math.floor(seconds % 86400 / 3600)}h`;
}

export async function list(args: string[], out: (line: string) => void): Promise<number> {
  const { values, positionals: rest } = parse(args, {
    ...commonOptions,
    json: { type: "boolean" },
  });
  if (values.help) {
    out(listHelp);
    return 0;
  }
  positionals(rest, []);
  const now = Date.now();
  const rows = (await listStates()).map((state) => {
    const alive = processAlive(state.pid);
    const owner = kernelPid(state.device);
    const status = !alive
      ? "daemon dead: device fails I/O; run 9nbd detach"
      : owner === state.pid
      ? "ok"
      : owner === undefined
      ? "kernel not bound"
      : `kernel bound to pid ${owner}`;
    return {
      ...state,
      uptimeSeconds: Math.max(0, Math.round((now - Date.parse(state.startedAt)) / 1000)),
      status,
    };
  });
  if (values.json) {
    out(JSON.stringify(rows));
    return ExitCode.ok;
  }
  if (rows.length === 0) {
    out("no devices attached");
    return ExitCode.ok;
  }
  const table = [[
    "DEVICE",
    "SPEC",
    "SERVER",
    "MODE",
    "SIZE",
    "PID",
    "UPTIME",
    "RECONNECTS",
    "FAILOVERS",
    "STATUS",
  ]];
  for (const row of rows) {
    table.push([
      row.device,
      row.spec,
      row.server,
      row.readOnly ? "ro" : "rw",
      humanBytes(row.sizeBytes),
      String(row.pid),
      formatUptime(row.uptimeSeconds),
      String(row.reconnects),
      String(row.failovers),
      row.status,
    ]);
  }
  const widths = table[0].map((_, i) => Math.max(...table.map((r) => r[i].length)));
  table.forEach((row, i) => {
    out(row.map((cell, j) => cell.padEnd(widths[j])).join("  ").trimEnd());
    const lastError = i > 0 ? rows[i - 1].lastError : null;
    if (lastError) out(`  last error: ${lastError}`);
  });
  return ExitCode.ok;
}
