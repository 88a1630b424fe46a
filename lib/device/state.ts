/**
 * What each attachment leaves under the run directory (`/run/9nbd/`, or
 * `$NBD9_RUN_DIR`): `nbdN.json` with the attachment's facts, kept current by
 * its daemon, plus the daemon's `nbdN.sock` and `nbdN.log`. `9nbd list` reads
 * these and cross-checks them with the kernel's `/sys/block/nbdN/pid`.
 *
 * @module
 */

/** Facts about one attachment, as its daemon last wrote them. */
export interface AttachmentState {
  device: string;
  spec: string;
  /** The server currently serving. */
  server: string;
  readOnly: boolean;
  sizeBytes: number;
  pid: number;
  /** ISO time the daemon started. */
  startedAt: string;
  reconnects: number;
  failovers: number;
  lastError: string | null;
  log: string;
}

/** Where state lives. */
export function runDir(): string {
  return Deno.env.get("NBD9_RUN_DIR") ?? "/run/9nbd";
}

/** `/dev/nbd3` → `nbd3`. */
export function deviceName(device: string): string {
  return device.slice(device.lastIndexOf("/") + 1);
}

export function statePath(device: string): string {
  return `${runDir()}/${deviceName(device)}.json`;
}

export function socketPath(device: string): string {
  return `${runDir()}/${deviceName(device)}.sock`;
}

export function logPath(device: string): string {
  return `${runDir()}/${deviceName(device)}.log`;
}

/** Write the state atomically (a reader never sees half a file). */
export async function writeState(state: AttachmentState): Promise<void> {
  await Deno.mkdir(runDir(), { recursive: true, mode: 0o755 });
  const path = statePath(state.device);
  const temp = `${path}.${state.pid}.tmp`;
  await Deno.writeTextFile(temp, JSON.stringify(state, null, 2) + "\n");
  await Deno.rename(temp, path);
}

export async function readState(device: string): Promise<AttachmentState | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(statePath(device)));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof SyntaxError) return undefined;
    throw err;
  }
}

/** Remove everything an attachment left behind. */
export async function removeState(device: string): Promise<void> {
  for (const path of [statePath(device), socketPath(device)]) {
    await Deno.remove(path).catch(() => {});
  }
}

/** Every attachment with a state file. */
export async function listStates(): Promise<AttachmentState[]> {
  const states: AttachmentState[] = [];
  try {
    for await (const entry of Deno.readDir(runDir())) {
      if (!entry.isFile || !/^nbd[0-9]+\.json$/.test(entry.name)) continue;
      const state = await readState(`/dev/${entry.name.slice(0, -5)}`);
      if (state) states.push(state);
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return states.sort((a, b) => a.device.localeCompare(b.device, "en", { numeric: true }));
}

/** Is process `pid` alive? (A zombie counts as dead.) */
export function processAlive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !/^\d+ \(.*\) [ZX] /.test(stat);
  } catch {
    return false;
  }
}

/**
 * The process the kernel says serves `device`, or undefined. sysfs names the
 * task that called NBD_DO_IT, which for us is a worker thread, so the thread
 * id is mapped to its process (thread group) id.
 */
export function kernelPid(device: string, sysBlock = "/sys/block"): number | undefined {
  let task: number;
  try {
    const text = Deno.readTextFileSync(`${sysBlock}/${deviceName(device)}/pid`).trim();
    if (!text) return undefined;
    task = Number(text);
  } catch {
    return undefined;
  }
  try {
    const status = Deno.readTextFileSync(`/proc/${task}/status`);
    const tgid = /^Tgid:\s*(\d+)/m.exec(status)?.[1];
    return tgid ? Number(tgid) : task;
  } catch {
    return task;
  }
}
