/**
 * Runs a shell script as root inside a QEMU VM booted from Debian's kernel, with the host's root
 * shared read-only over virtio-9p, and collects its test results from the serial console.
 *
 * The host kernel lacks NBD and 9P, so anything that needs the real kernel runs here. Nested KVM
 * hangs on the CI machines, so the VM uses TCG (`-accel tcg -cpu max`); it boots in seconds.
 *
 * Guest protocol, one line each on stdout: `@@TEST ok <name>`, `@@TEST fail <name>: <detail>`.
 * The harness adds `@@BOOTED` before the script starts and `@@EXIT <code>` after it ends.
 *
 * @module
 */

import { ensureKernel, type Kernel } from "./kernel.ts";
import { buildInitramfs, findStaticBusybox, HOST_ROOT_TAG } from "./initramfs.ts";

/** Options for {@linkcode runInVm}. */
export interface RunInVmOptions {
  /** Kill the VM after this long; default 300 000 ms (TCG is slow, first runs slower). */
  timeoutMs?: number;
  /** Guest RAM; default 2048 MiB. Writes anywhere in the guest land in RAM. */
  memoryMiB?: number;
  /** Extra variables exported to the guest script (added to PATH, HOME, DENO_DIR, …). */
  env?: Record<string, string>;
}

/** One `@@TEST` line from the guest. */
export interface VmTestResult {
  name: string;
  ok: boolean;
  detail: string;
}

/** What a VM run produced. */
export interface VmRun {
  /** The guest script's exit code; -1 when the guest never reported one (crash, timeout). */
  exitCode: number;
  /** The guest's `@@TEST` lines, in order. */
  results: VmTestResult[];
  /** Everything QEMU printed: serial console (kernel and script output) and QEMU's stderr. */
  log: string;
  /** True when the VM was killed at `timeoutMs`. */
  timedOut: boolean;
  /** From starting QEMU until the guest script started; -1 if it never did. */
  bootMs: number;
  /** From starting QEMU until it exited. */
  totalMs: number;
}

const QEMU = "qemu-system-x86_64";

let kernelPromise: Promise<Kernel> | undefined;

/** The cached kernel, fetched at most once per process (failures are retried next call). */
function kernel(): Promise<Kernel> {
  kernelPromise ??= ensureKernel().catch((err) => {
    kernelPromise = undefined;
    throw err;
  });
  return kernelPromise;
}

async function commandWorks(cmd: string, args: string[]): Promise<boolean> {
  try {
    const out = await new Deno.Command(cmd, { args, stdin: "null", stdout: "null", stderr: "null" })
      .output();
    return out.success;
  } catch {
    return false;
  }
}

/**
 * Says why VM tests cannot run here, or null when they can.
 *
 * Downloads and unpacks the kernel on first use, so the first call can take a few seconds.
 */
export async function vmUnavailable(): Promise<string | null> {
  if (Deno.build.os !== "linux" || Deno.build.arch !== "x86_64") {
    return `needs linux x86_64, this is ${Deno.build.os} ${Deno.build.arch}`;
  }
  if (!(await commandWorks(QEMU, ["--version"]))) {
    return `${QEMU} not runnable (Debian package qemu-system-x86)`;
  }
  try {
    await findStaticBusybox();
  } catch (err) {
    return err instanceof Error ? err.message : String(err);
  }
  try {
    await kernel();
  } catch (err) {
    return `cannot get Debian's kernel: ${err instanceof Error ? err.message : err}`;
  }
  return null;
}

/** The environment every guest script gets, before `options.env`. */
function baseGuestEnv(): Record<string, string> {
  const denoPath = Deno.execPath();
  const denoDir = denoPath.slice(0, denoPath.lastIndexOf("/"));
  const env: Record<string, string> = {
    PATH: `${denoDir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
    HOME: Deno.env.get("HOME") ?? "/root",
    DENO_NO_UPDATE_CHECK: "1",
    // The host's deno binary, for scripts that want it by absolute path.
    VM_DENO: denoPath,
  };
  // Same DENO_DIR as the host so its npm and module caches are used without network; the root
  // is an overlay with its writable layer on tmpfs, so writes there stay in the guest's RAM.
  const denoDirEnv = Deno.env.get("DENO_DIR");
  if (denoDirEnv) env.DENO_DIR = denoDirEnv;
  return env;
}

/** Parses the guest's protocol lines out of the serial log. */
export function parseGuestOutput(log: string): { results: VmTestResult[]; exitCode: number } {
  const results: VmTestResult[] = [];
  let exitCode = -1;
  for (const rawLine of log.split("\n")) {
    const line = rawLine.replace(/\r/g, "");
    let match = /@@TEST ok (.*)$/.exec(line);
    if (match) {
      results.push({ name: match[1].trim(), ok: true, detail: "" });
      continue;
    }
    match = /@@TEST fail ([^:]*)(?::\s?(.*))?$/.exec(line);
    if (match) {
      results.push({ name: match[1].trim(), ok: false, detail: match[2] ?? "" });
      continue;
    }
    match = /@@EXIT (\d+)\s*$/.exec(line);
    if (match) exitCode = Number(match[1]);
  }
  return { results, exitCode };
}

/**
 * Boots the VM, runs `script` with `/bin/sh` as root in the guest, and powers the VM off.
 *
 * The guest's root is the host's root (read-only over 9P, with a RAM overlay so it is writable),
 * so the host's `deno`, `diod`, and this repository at its host path are all there; `/tmp` and
 * `/run` are fresh tmpfs; `lo` is up; `modprobe` finds Debian's modules. The VM has no network
 * beyond loopback. QEMU is killed at the timeout and never outlives this call (and, through
 * `setpriv --pdeathsig`, not this process either).
 *
 * Set `NBD9_VM_VERBOSE=1` to copy the serial console to stderr while it runs.
 */
export async function runInVm(script: string, options: RunInVmOptions = {}): Promise<VmRun> {
  const { timeoutMs = 300_000, memoryMiB = 2048 } = options;
  const k = await kernel();
  const initramfs = await buildInitramfs({
    kernel: k,
    script,
    env: { ...baseGuestEnv(), ...options.env },
  });
  const workDir = await Deno.makeTempDir({ prefix: "9nbd-vm-" });
  try {
    const initrdPath = `${workDir}/initramfs.cpio.gz`;
    await Deno.writeFile(initrdPath, initramfs);
    const qemuArgs = [
      ...["-m", String(memoryMiB), "-smp", "2", "-nographic", "-no-reboot", "-net", "none"],
      ...["-accel", "tcg", "-cpu", "max"],
      ...["-kernel", k.vmlinuz, "-initrd", initrdPath],
      ...["-append", "quiet console=ttyS0 panic=-1 rdinit=/init"],
      "-virtfs",
      `local,path=/,mount_tag=${HOST_ROOT_TAG},security_model=none,readonly=on,multidevs=remap`,
    ];
    // PR_SET_PDEATHSIG makes the kernel kill QEMU if this process dies without cleaning up.
    const wrap = await commandWorks("setpriv", ["--help"]);
    const [cmd, args] = wrap
      ? ["setpriv", ["--pdeathsig", "KILL", "--", QEMU, ...qemuArgs]]
      : [QEMU, qemuArgs];
    return await runQemu(cmd, args, timeoutMs);
  } finally {
    await Deno.remove(workDir, { recursive: true }).catch(() => {});
  }
}

async function runQemu(cmd: string, args: string[], timeoutMs: number): Promise<VmRun> {
  const verbose = Deno.env.get("NBD9_VM_VERBOSE") === "1";
  const start = performance.now();
  const child = new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" })
    .spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch {
      // Already exited.
    }
  }, timeoutMs);
  let bootMs = -1;
  let serial = "";
  const readSerial = async () => {
    const decoder = new TextDecoder();
    for await (const chunk of child.stdout) {
      const text = decoder.decode(chunk, { stream: true });
      serial += text;
      if (verbose) await Deno.stderr.write(chunk);
      if (bootMs < 0 && serial.includes("@@BOOTED")) bootMs = performance.now() - start;
    }
    serial += decoder.decode();
  };
  const readStderr = () => new Response(child.stderr).text();
  try {
    const [, stderr] = await Promise.all([readSerial(), readStderr(), child.status]);
    const totalMs = performance.now() - start;
    const log = stderr ? `${serial}\n--- qemu stderr ---\n${stderr}` : serial;
    const { results, exitCode } = parseGuestOutput(serial);
    return { exitCode, results, log, timedOut, bootMs, totalMs };
  } finally {
    clearTimeout(timer);
    // Reached with QEMU still running only if reading its output threw.
    try {
      child.kill("SIGKILL");
      await child.status;
    } catch {
      // Already exited and reaped.
    }
  }
}
