/**
 * The attachment daemon: the long-lived process that binds a `/dev/nbdN` to
 * a 9P image and answers the kernel's NBD requests. The kernel ties the
 * device to the task that called NBD_SET_SOCK / NBD_DO_IT, so this process
 * does the binding itself and lives as long as the attachment.
 *
 * Sequence: open the image (permanent errors fail here, fast) → listen on a
 * Unix socket → open the device, set block size, size, flags and timeout →
 * connect a socket to our listener and hand it to the kernel (NBD_SET_SOCK)
 * → NBD_DO_IT on a worker thread → serve requests → check the device is
 * usable (size visible, a first read served) → report ready. SIGTERM or
 * `9nbd detach` → flush, NBD_DISCONNECT, wait for DO_IT to return, clean up.
 *
 * @module
 */

import type { BlockBackend } from "../backend.ts";
import { describeError, ErrnoError } from "../errors.ts";
import type { KernelNbd } from "../kernel/nbd_device.ts";
import { logger } from "../log.ts";
import { deviceSizeBytes, NbdEngine, transmissionFlags } from "../nbd/engine.ts";
import { deviceName, logPath, removeState, socketPath, writeState } from "./state.ts";

const log = logger("daemon");

/** A backend the daemon can serve and report on. */
export interface ServedBackend extends BlockBackend {
  /** The server now serving. */
  readonly server: string;
  readonly reconnects: number;
  readonly failovers: number;
  readonly lastError: string | null;
  close(): Promise<void>;
}

/** What the daemon serves and how. */
export interface DaemonOptions {
  device: string;
  specText: string;
  /** The image: named in the state file with its counters, flushed and closed at detach. */
  backend: ServedBackend;
  /**
   * What the kernel's requests go to when something sits in front of
   * `backend` (read-ahead); `backend` itself by default.
   */
  front?: BlockBackend;
  kernel: KernelNbd;
  blockSizeBytes: number;
  maxInflight?: number;
  /** Sockets between the kernel and us, served in parallel (default 1). */
  kernelSockets?: number;
  /**
   * Largest kernel request (max_sectors_kb, default 1024): a large request
   * becomes many 9P requests in parallel rather than many round trips.
   */
  maxRequestKiB?: number;
  /** Called once when the device is usable, or with the error that stopped it. */
  onReady(error?: unknown): void;
  /** Directory of sysfs block devices (tests point it elsewhere). */
  sysBlock?: string;
}

/** Serve the attachment until it is detached; resolves when everything is cleaned up. */
export async function runDaemon(options: DaemonOptions): Promise<void> {
  const { device, backend, kernel } = options;
  const sysBlock = options.sysBlock ?? "/sys/block";
  const name = deviceName(device);
  const sockPath = socketPath(device);
  const deviceBytes = deviceSizeBytes(backend.sizeBytes, options.blockSizeBytes);
  if (deviceBytes === 0) {
    throw new RangeError(
      `the image (${backend.sizeBytes} bytes) is smaller than one ${options.blockSizeBytes}-byte block`,
    );
  }
  await Deno.mkdir(sockPath.slice(0, sockPath.lastIndexOf("/")), { recursive: true });
  await Deno.remove(sockPath).catch(() => {});
  const listener = Deno.listen({ transport: "unix", path: sockPath });
  let deviceFd = -1;
  let doIt: Promise<number> | undefined;
  const engines: NbdEngine[] = [];
  let stopping = false;
  let stateTimer: ReturnType<typeof setInterval> | undefined;
  const stop = async (why: string) => {
    if (stopping || deviceFd < 0) return;
    stopping = true;
    log.info(`detaching ${device}: ${why}`);
    try {
      // Push the page cache's dirty blocks out through us before the disconnect.
      if (!backend.readOnly) await fsyncDevice(device);
    } catch (err) {
      log.warn(`flushing ${device} before detach: ${describeError(err)}`);
    }
    try {
      await kernel.disconnect(deviceFd);
    } catch (err) {
      log.warn(`NBD_DISCONNECT ${device}: ${describeError(err)}`);
      for (const engine of engines) engine.stop();
    }
  };
  const onSignal = () => void stop("signal");
  try {
    deviceFd = kernel.openDevice(device);
    const sockets = Math.max(1, options.kernelSockets ?? 1);
    kernel.configure(deviceFd, {
      sizeBytes: deviceBytes,
      blockSize: options.blockSizeBytes,
      // Every socket is served from the one backend, so writes acknowledged on
      // one are seen on all: several sockets are safe (CAN_MULTI_CONN).
      flags: transmissionFlags(backend, { canMultiConn: sockets > 1 }),
      timeoutSeconds: 0,
    });
    const servings: Promise<void>[] = [];
    for (let i = 0; i < sockets; i++) {
      const accepting = listener.accept();
      const kernelSide = kernel.connectUnixSocket(sockPath);
      const conn = await accepting;
      try {
        kernel.setSock(deviceFd, kernelSide);
      } finally {
        kernel.closeFd(kernelSide); // The kernel holds its own reference now.
      }
      const engine = new NbdEngine(conn, options.front ?? backend, {
        maxInflight: options.maxInflight,
        exportSizeBytes: deviceBytes,
        onRequestError: (err, request) =>
          log.warn(`request ${request.type} at ${request.offset}: ${describeError(err)}`),
      });
      engines.push(engine);
      servings.push(engine.serve());
    }
    listener.close();
    await Deno.remove(sockPath).catch(() => {});
    const serving = Promise.all(servings);
    doIt = kernel.doIt(deviceFd);
    Deno.addSignalListener("SIGTERM", onSignal);
    Deno.addSignalListener("SIGINT", onSignal);
    await Promise.race([
      waitUsable(device, sysBlock, deviceBytes),
      doIt.then((rc) => {
        throw new Error(`NBD_DO_IT returned ${rc} before the device was usable`);
      }),
    ]);
    await setMaxRequest(device, sysBlock, options.maxRequestKiB ?? 1024);
    const startedAt = new Date().toISOString();
    const state = () => ({
      device,
      spec: options.specText,
      server: backend.server,
      readOnly: backend.readOnly,
      sizeBytes: deviceBytes,
      pid: Deno.pid,
      startedAt,
      reconnects: backend.reconnects,
      failovers: backend.failovers,
      lastError: backend.lastError,
      log: logPath(device),
    });
    let written = JSON.stringify(state());
    await writeState(state());
    // `list` reads the state file; keep it current without a write per request.
    stateTimer = setInterval(() => {
      const now = JSON.stringify(state());
      if (now === written || stopping) return;
      written = now;
      writeState(state()).catch((err) => log.warn(`state file: ${describeError(err)}`));
    }, 500);
    log.info(
      `${device} attached: ${options.specText}, ${deviceBytes} bytes, ${
        backend.readOnly ? "read-only" : "read-write"
      }`,
    );
    options.onReady();
    await doIt;
    await serving.catch((err) => log.warn(`engine: ${describeError(err)}`));
    log.info(`${device} detached`);
  } catch (err) {
    options.onReady(err);
    if (deviceFd >= 0 && doIt) {
      // The kernel is bound: undo it so the device is free again.
      await kernel.disconnect(deviceFd).catch(() => {});
      await Promise.race([doIt, new Promise((r) => setTimeout(r, 5000))]);
    }
    throw err;
  } finally {
    clearInterval(stateTimer);
    Deno.removeSignalListener("SIGTERM", onSignal);
    Deno.removeSignalListener("SIGINT", onSignal);
    try {
      listener.close();
    } catch { /* closed after accept */ }
    for (const engine of engines) engine.stop();
    if (deviceFd >= 0) {
      try {
        kernel.clearSock(deviceFd);
      } catch { /* nothing to clear */ }
      kernel.closeFd(deviceFd);
    }
    if (!backend.readOnly) {
      await backend.flush().catch((e) => log.warn(`final flush: ${describeError(e)}`));
    }
    await backend.close().catch(() => {});
    await removeState(device);
    log.debug(`${name}: state removed`);
  }
}

/** Raise the device's largest request size (capped by what the driver allows). */
async function setMaxRequest(device: string, sysBlock: string, kib: number): Promise<void> {
  const queue = `${sysBlock}/${deviceName(device)}/queue`;
  try {
    const hardware = Number((await Deno.readTextFile(`${queue}/max_hw_sectors_kb`)).trim());
    const wanted = Math.min(kib, hardware || kib);
    await Deno.writeTextFile(`${queue}/max_sectors_kb`, String(wanted));
    log.debug(`${device}: max_sectors_kb ${wanted}`);
  } catch (err) {
    log.warn(`${device}: cannot set max_sectors_kb: ${describeError(err)}`);
  }
}

/** fsync the block device: the kernel writes dirty pages and sends FLUSH. */
async function fsyncDevice(device: string): Promise<void> {
  const file = await Deno.open(device, { read: true });
  try {
    await file.sync();
  } finally {
    file.close();
  }
}

/**
 * Wait until the kernel shows the device's size and a read of its first
 * block comes back through us. A bounded wait: a device that never becomes
 * usable is an attach failure, not a hang.
 */
async function waitUsable(device: string, sysBlock: string, sizeBytes: number): Promise<void> {
  const deadline = performance.now() + 30_000;
  const sizeFile = `${sysBlock}/${deviceName(device)}/size`;
  while (true) {
    const sectors = Number((await Deno.readTextFile(sizeFile).catch(() => "0")).trim());
    if (sectors * 512 === sizeBytes) break;
    if (performance.now() > deadline) {
      throw new Error(`${device} did not show its size (${sizeBytes} bytes) within 30 s`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  const file = await Deno.open(device, { read: true });
  try {
    const probe = new Uint8Array(Math.min(4096, sizeBytes));
    const n = await file.read(probe);
    if (n === null || n === 0) throw new Error(`${device}: the first read returned nothing`);
  } catch (err) {
    if (err instanceof ErrnoError) throw err;
    throw new Error(`${device}: the first read failed: ${describeError(err)}`, { cause: err });
  } finally {
    file.close();
  }
}
