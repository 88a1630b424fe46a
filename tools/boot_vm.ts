/**
 * Boots a QEMU VM the way a diskless node boots: Debian's kernel, an initrd, a kernel command
 * line, one virtio NIC on QEMU's user-mode network, and no disk and no host share. The root file
 * system comes over that network from servers on the host's loopback.
 *
 * Network facts (QEMU 7.2, libslirp 4.7, checked by booting): the guest's DHCP lease is
 * 10.0.2.15/24 from 10.0.2.2. `restrict=on` drops every connection the guest makes except to a
 * `guestfwd` address, so nothing leaves the host. A guestfwd to a `tcp:` chardev connects once,
 * when QEMU starts, and carries one stream for good (a second guest connection gets nothing, a
 * restarted server is never reconnected); a `cmd:` guestfwd runs its command once per guest
 * connection with the connection as stdin and stdout. So each forward runs busybox's `nc` to the
 * host port per connection: reconnects and server restarts work as on a real network, except
 * that while no server listens the guest's connect succeeds and is then closed (QEMU accepts it
 * before the relay fails) instead of being refused. The relay adds about 0.02 ms a round trip.
 *
 * The serial console is read line by line as it comes: a caller reacts to lines (`onLine`,
 * {@linkcode RunningVm.waitForLine}), for example to kill a server at a point of the boot. The
 * guest reports with the lines tools/vm.ts parses (`@@TEST ok|fail`) and `@@METRIC name value`.
 *
 * @module
 */

import { findStaticBusybox } from "./initramfs.ts";
import { ensureKernel } from "./kernel.ts";
import { parseGuestOutput, type VmTestResult } from "./vm.ts";

/** What QEMU's user-mode DHCP server gives the guest. */
export const GUEST_NETWORK = {
  /** The guest's address (first DHCP lease). */
  address: "10.0.2.15",
  prefixLength: 24,
  /** Gateway and DHCP server: QEMU itself. */
  gateway: "10.0.2.2",
} as const;

/** A guest address that QEMU relays to a port on the host's loopback. */
export interface GuestForward {
  /** The address the guest connects to, in 10.0.2.0/24 (not one QEMU uses itself). */
  guestAddress: string;
  /** The TCP port the guest connects to. */
  guestPort: number;
  /** The port on 127.0.0.1 each connection is relayed to. */
  hostPort: number;
}

/** Addresses of 10.0.2.0/24 that QEMU's user network uses itself (gateway, DNS, DHCP leases). */
const RESERVED_HOSTS = new Set([0, 2, 3, 255]);
const DHCP_FIRST_HOST = 15;
const DHCP_LEASES = 16;

function checkForward(forward: GuestForward): void {
  const match = /^10\.0\.2\.(\d{1,3})$/.exec(forward.guestAddress);
  const host = match ? Number(match[1]) : NaN;
  if (!(host >= 0 && host <= 255) || RESERVED_HOSTS.has(host)) {
    throw new Error(
      `guest forward address ${forward.guestAddress} is not a free address of 10.0.2.0/24`,
    );
  }
  if (host >= DHCP_FIRST_HOST && host < DHCP_FIRST_HOST + DHCP_LEASES) {
    throw new Error(`guest forward address ${forward.guestAddress} is in QEMU's DHCP range`);
  }
  for (const [name, port] of [["guest", forward.guestPort], ["host", forward.hostPort]] as const) {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new Error(`guest forward ${name} port ${port} is not a TCP port`);
    }
  }
}

/**
 * QEMU arguments for one virtio NIC on a restricted user-mode network whose only reachable
 * destinations are `forwards`, each relayed per connection by `relayCommand` (an argv prefix to
 * which `127.0.0.1 PORT` is appended, e.g. `["busybox", "nc"]`).
 *
 * @throws Error when a forward is outside 10.0.2.0/24, collides with QEMU's own addresses,
 *   repeats a guest address and port, or the relay command cannot be written into the option
 */
export function userNetworkArgs(
  forwards: readonly GuestForward[],
  relayCommand: readonly string[],
): string[] {
  for (const word of relayCommand) {
    // QEMU splits -netdev at commas; libslirp splits the command at blanks (shell rules).
    if (!/^[A-Za-z0-9_./+-]+$/.test(word)) {
      throw new Error(`relay command word ${JSON.stringify(word)} cannot go into a guestfwd`);
    }
  }
  const seen = new Set<string>();
  const options = ["user", "id=n0", "restrict=on"];
  for (const forward of forwards) {
    checkForward(forward);
    const where = `${forward.guestAddress}:${forward.guestPort}`;
    if (seen.has(where)) throw new Error(`guest forward ${where} given twice`);
    seen.add(where);
    const relay = [...relayCommand, "127.0.0.1", String(forward.hostPort)].join(" ");
    options.push(`guestfwd=tcp:${where}-cmd:${relay}`);
  }
  // romfile= skips the iPXE option ROM: the kernel is given directly, nothing boots from the NIC.
  return ["-netdev", options.join(","), "-device", "virtio-net-pci,netdev=n0,romfile="];
}

/** Splits a byte stream's text into lines as it arrives (`\r` dropped, the last partial kept). */
export class LineSplitter {
  #partial = "";

  /** Feeds text; returns the lines it completed. */
  push(text: string): string[] {
    const parts = (this.#partial + text).split("\n");
    this.#partial = parts.pop() ?? "";
    return parts.map((line) => line.replaceAll("\r", ""));
  }

  /** Ends the stream; returns the unterminated last line, if any. */
  end(): string[] {
    const rest = this.#partial.replaceAll("\r", "");
    this.#partial = "";
    return rest === "" ? [] : [rest];
  }
}

/** `@@METRIC <name> <number>` lines of a console log, by name (a later line wins). */
export function parseMetrics(log: string): Record<string, number> {
  const metrics: Record<string, number> = {};
  for (const line of log.split("\n")) {
    const match = /@@METRIC ([A-Za-z0-9_.-]+) (-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)\s*$/.exec(
      line.replaceAll("\r", ""),
    );
    if (match) metrics[match[1]] = Number(match[2]);
  }
  return metrics;
}

/** A console line and when it arrived. */
export interface ConsoleLine {
  text: string;
  /** Milliseconds since QEMU was started. */
  atMs: number;
}

/** Options for {@linkcode startVm}. */
export interface BootVmOptions {
  /** The initrd to boot. */
  initrdPath: string;
  /** The kernel command line (add `console=ttyS0` to see anything). */
  append: string;
  /** The kernel; default the vmlinuz of tools/kernel.ts. */
  vmlinuzPath?: string;
  /** What the guest can reach; nothing else. */
  forwards: readonly GuestForward[];
  /** Kill QEMU after this long; default 600 000 ms (TCG on a busy machine is slow). */
  timeoutMs?: number;
  /** Guest RAM; default 2048 MiB. */
  memoryMiB?: number;
  /** Guest CPUs; default 2. */
  cpus?: number;
  /** Called with each console line as it arrives. */
  onLine?: (line: ConsoleLine) => void;
}

/** What a VM boot produced. */
export interface BootVmResult {
  /** Every console line with its arrival time. */
  lines: ConsoleLine[];
  /** The console followed by QEMU's stderr, if it wrote any. */
  log: string;
  /** The guest's `@@TEST` lines, in order. */
  results: VmTestResult[];
  /** The guest's `@@METRIC` lines. */
  metrics: Record<string, number>;
  /** True when QEMU was killed at the timeout. */
  timedOut: boolean;
  /** True when {@linkcode RunningVm.kill} stopped it. */
  killed: boolean;
  /** QEMU's exit code (0 after a guest power-off), or null when a signal ended it. */
  qemuExitCode: number | null;
  /** From starting QEMU until it exited. */
  totalMs: number;
}

/** A VM that is running; its result settles when QEMU has exited. */
export interface RunningVm {
  /**
   * Waits for a console line matching `pattern` (lines already seen count).
   *
   * @throws Error when QEMU exits or `timeoutMs` passes first
   */
  waitForLine(pattern: RegExp, timeoutMs: number): Promise<ConsoleLine>;
  /** Kills QEMU now (SIGKILL); {@linkcode RunningVm.result} settles soon after. */
  kill(): void;
  /** Settles when QEMU has exited; never rejects. */
  result: Promise<BootVmResult>;
}

const QEMU = "qemu-system-x86_64";

/**
 * Starts QEMU (TCG, `-cpu max`, no default devices, no reboot, serial console on stdout) and
 * returns at once.
 *
 * QEMU never outlives the timeout, and through `setpriv --pdeathsig` not this process either.
 * Set `NBD9_VM_VERBOSE=1` to copy the console to stderr while it runs.
 */
export async function startVm(options: BootVmOptions): Promise<RunningVm> {
  const { timeoutMs = 600_000, memoryMiB = 2048, cpus = 2 } = options;
  const vmlinuzPath = options.vmlinuzPath ?? (await ensureKernel()).vmlinuz;
  const busybox = (await findStaticBusybox()).path;
  const pdeathsig = await setprivWorks();
  // No --pdeathsig for the relay: libslirp spawns it through an intermediate process that exits
  // at once. A relay ends when either side closes: QEMU's end closing (QEMU exited) half-closes
  // the server connection, and the servers used here then close it.
  const relay = [busybox, "nc"];
  const qemuArgs = [
    ...["-m", String(memoryMiB), "-smp", String(cpus), "-no-reboot"],
    // Only the devices a diskless node needs: no VGA, floppy, CD-ROM or default NIC, whose
    // drivers the guest would otherwise load (over the network) and probe at every boot.
    ...["-nodefaults", "-display", "none", "-serial", "stdio"],
    ...["-accel", "tcg", "-cpu", "max"],
    ...["-kernel", vmlinuzPath, "-initrd", options.initrdPath, "-append", options.append],
    ...userNetworkArgs(options.forwards, relay),
  ];
  // PR_SET_PDEATHSIG makes the kernel kill QEMU if this process dies without cleaning up.
  const [cmd, args] = pdeathsig
    ? ["setpriv", ["--pdeathsig", "KILL", "--", QEMU, ...qemuArgs]]
    : [QEMU, qemuArgs];
  return spawnConsole(cmd, args, { timeoutMs, onLine: options.onLine });
}

/** Boots a VM and waits for QEMU to exit (power-off, crash, or the timeout). */
export async function bootVm(options: BootVmOptions): Promise<BootVmResult> {
  return await (await startVm(options)).result;
}

async function setprivWorks(): Promise<boolean> {
  try {
    const out = await new Deno.Command("setpriv", {
      args: ["--help"],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
}

interface LineWaiter {
  pattern: RegExp;
  resolve: (line: ConsoleLine) => void;
  reject: (err: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * Runs `cmd` (QEMU, from {@linkcode startVm}) with its stdout read as a serial console: lines as
 * they come, `waitForLine`, a kill at `timeoutMs`, and the guest's reports parsed at the end.
 */
export function spawnConsole(
  cmd: string,
  args: string[],
  options: { timeoutMs: number; onLine?: (line: ConsoleLine) => void },
): RunningVm {
  const { timeoutMs, onLine } = options;
  const verbose = Deno.env.get("NBD9_VM_VERBOSE") === "1";
  const start = performance.now();
  const child = new Deno.Command(cmd, { args, stdin: "null", stdout: "piped", stderr: "piped" })
    .spawn();
  let timedOut = false;
  let killed = false;
  let exited = false;
  const kill = () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already exited.
    }
  };
  const timer = setTimeout(() => {
    timedOut = true;
    kill();
  }, timeoutMs);

  const lines: ConsoleLine[] = [];
  const waiters = new Set<LineWaiter>();
  const settle = (waiter: LineWaiter) => {
    waiters.delete(waiter);
    clearTimeout(waiter.timer);
  };
  const take = (text: string) => {
    const line = { text, atMs: performance.now() - start };
    lines.push(line);
    onLine?.(line);
    for (const waiter of [...waiters]) {
      if (text.search(waiter.pattern) !== -1) {
        settle(waiter);
        waiter.resolve(line);
      }
    }
  };

  const readConsole = async () => {
    const decoder = new TextDecoder();
    const splitter = new LineSplitter();
    for await (const chunk of child.stdout) {
      if (verbose) await Deno.stderr.write(chunk);
      for (const text of splitter.push(decoder.decode(chunk, { stream: true }))) take(text);
    }
    for (const text of splitter.push(decoder.decode())) take(text);
    for (const text of splitter.end()) take(text);
  };

  const result = (async (): Promise<BootVmResult> => {
    let stderr = "";
    let status: Deno.CommandStatus | undefined;
    try {
      [, stderr, status] = await Promise.all([
        readConsole(),
        new Response(child.stderr).text(),
        child.status,
      ]);
    } finally {
      clearTimeout(timer);
      // Reached with QEMU still running only if reading its output threw.
      kill();
      status ??= await child.status.catch(() => undefined);
      exited = true;
      for (const waiter of [...waiters]) {
        settle(waiter);
        waiter.reject(new Error(`the VM exited before a console line matched ${waiter.pattern}`));
      }
    }
    const consoleText = lines.map((l) => l.text).join("\n");
    const log = stderr.trim() ? `${consoleText}\n--- qemu stderr ---\n${stderr}` : consoleText;
    return {
      lines,
      log,
      results: parseGuestOutput(consoleText).results,
      metrics: parseMetrics(consoleText),
      timedOut,
      killed,
      qemuExitCode: status?.signal ? null : status?.code ?? null,
      totalMs: performance.now() - start,
    };
  })().catch((err): BootVmResult => ({
    lines,
    log: `${lines.map((l) => l.text).join("\n")}\n--- harness error ---\n${err}`,
    results: [],
    metrics: {},
    timedOut,
    killed,
    qemuExitCode: null,
    totalMs: performance.now() - start,
  }));

  return {
    result,
    kill: () => {
      killed = true;
      kill();
    },
    waitForLine: (pattern, waitMs) => {
      const seen = lines.find((l) => l.text.search(pattern) !== -1);
      if (seen) return Promise.resolve(seen);
      if (exited) {
        return Promise.reject(new Error(`the VM exited before a console line matched ${pattern}`));
      }
      return new Promise((resolve, reject) => {
        const waiter: LineWaiter = {
          pattern,
          resolve,
          reject,
          timer: setTimeout(() => {
            settle(waiter);
            reject(new Error(`no console line matched ${pattern} within ${waitMs} ms`));
          }, waitMs),
        };
        waiters.add(waiter);
      });
    },
  };
}
