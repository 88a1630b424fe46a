/**
 * Boot benchmark: a Debian bookworm node (systemd as PID 1) whose root file system is /dev/nbd0
 * over the network, booted in QEMU TCG (tools/boot_vm.ts) from the root tree of
 * tools/debian_root.ts. This is the comparator, Debian's own NBD root: nbd-client's
 * initramfs-tools hook (`nbdroot=`) against `nbd-server` on the host's loopback.
 *
 * The image is a copy of the cached tree with nbd-client installed (`dpkg -i`), its initrd built
 * inside that copy by `update-initramfs`, a workload service, and the SHA-256 of every file under
 * /usr. Once multi-user.target is reached the service reports systemd's own timestamps (guest
 * monotonic clock, which starts with the kernel), drops the page cache, reads and checks all of
 * /usr, and powers off. A boot counts as clean when QEMU exits by itself after the power-off,
 * the console shows no I/O or ext4 error, and `e2fsck -fn` finds the image clean afterwards.
 *
 * With `--kill-restart`, a second boot has nbd-server killed `--kill-after` seconds (default 20)
 * after the guest connected its root and restarted `--down` seconds (default 3) later; it
 * reports whether the guest was connected at the kill, how far its console had come, and whether
 * it connected to the new server.
 *
 * Usage: deno run -A bench/boot.ts [--kill-restart] [--kill-after S] [--down S] [--timeout S]
 *
 * Prints a markdown table, then one line of JSON. Exit status: 0 measured (even a boot that did
 * not recover: that is a result); 1 the normal boot failed; 2 bad arguments or cannot run here.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  type BootVmResult,
  type ConsoleLine,
  type GuestForward,
  type RunningVm,
  startVm,
} from "../tools/boot_vm.ts";
import {
  checksumTree,
  copyDebianRoot,
  DEBIAN_SUITE,
  type DebianRoot,
  ensureDebianRoot,
  installDebs,
  makeExt4Image,
  makeWorkDir,
  removeTree,
  runCommand,
  type TreeFile,
  withChroot,
  writeTreeFiles,
} from "../tools/debian_root.ts";
import { ensurePackages, VM_BOOT_PACKAGES } from "../tools/packages.ts";
import { vmCacheDir } from "../tools/kernel.ts";
import { freePort } from "../tools/servers.ts";

/** The address and port the guest dials for its root; QEMU relays it to nbd-server. */
export const NBD_GUEST_FORWARD = { guestAddress: "10.0.2.100", guestPort: 10809 } as const;
/** The export's name on the server. */
const EXPORT_NAME = "root";

/** Kernel command-line words every boot of this bench shares. */
export const BASE_APPEND = "console=ttyS0 panic=-1 rw";

/** The comparator's command line: initramfs-tools' nbd script, DHCP on the only NIC. */
const NBDROOT_APPEND = `root=/dev/nbd0 ` +
  `nbdroot=${NBD_GUEST_FORWARD.guestAddress}:${NBD_GUEST_FORWARD.guestPort}/${EXPORT_NAME} ` +
  `ip=dhcp ${BASE_APPEND}`;

/** Where the workload's files live in the image (outside /usr, which it checks). */
const WORKLOAD_DIR = "/var/lib/9nbd-bench";
const WORKLOAD_UNIT = "9nbd-bench-workload.service";

/** Runs after multi-user.target: boot times, a cold read of /usr against the checksums, power-off. */
const WORKLOAD_SCRIPT = String.raw`#!/bin/sh
exec >/dev/console 2>&1
metric() { echo "@@METRIC $1 $2"; }
# systemd's monotonic timestamps are microseconds since the kernel started.
seconds() { awk -v us="$1" 'BEGIN { printf "%.3f", us / 1e6 }'; }
echo "@@MARK workload-start"
metric multi_user_s "$(seconds "$(systemctl show -P ActiveEnterTimestampMonotonic multi-user.target)")"
metric userspace_start_s "$(seconds "$(systemctl show -P UserspaceTimestampMonotonic)")"
metric initrd_start_s "$(seconds "$(systemctl show -P InitRDTimestampMonotonic)")"
root=$(awk '$2 == "/" { dev = $1 } END { print dev }' /proc/mounts)
if [ "$root" = /dev/nbd0 ]; then echo "@@TEST ok root-on-nbd0"; else echo "@@TEST fail root-on-nbd0: / is $root"; fi
failed=$(systemctl list-units --failed --plain --no-legend | awk '{ print $1 }' | tr '\n' ' ')
metric failed_units "$(echo $failed | wc -w)"
[ -z "$failed" ] || echo "@@INFO failed units: $failed"
sync
echo 3 > /proc/sys/vm/drop_caches
# Cold read first, timed alone: under TCG hashing costs far more CPU than the reads, so the
# checksums are checked in a second pass from the page cache.
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
t0=$(now)
find /usr -type f -exec cat {} + > /dev/null
t1=$(now)
metric usr_read_s "$(elapsed "$t0" "$t1")"
if (cd / && sha256sum --quiet --strict -c ${WORKLOAD_DIR}/usr.sha256) > /run/usr-check 2>&1; then
  echo "@@TEST ok usr-checksums"
else
  echo "@@TEST fail usr-checksums: $(head -c 400 /run/usr-check | tr '\n' ' ')"
fi
metric usr_verify_s "$(elapsed "$t1" "$(now)")"
echo "@@MARK workload-done"
systemctl poweroff
`;

const WORKLOAD_SERVICE = `[Unit]
Description=9nbd boot bench workload
After=multi-user.target

[Service]
Type=oneshot
ExecStart=${WORKLOAD_DIR}/workload

[Install]
WantedBy=multi-user.target
`;

/** Console lines that mean the root device failed under the file system. */
const IO_ERROR = /I\/O error|EXT4-fs error|EXT4-fs warning|blk_update_request|Buffer I\/O/;

/** What preparing the comparator's image took. */
export interface ImagePreparation {
  copySeconds: number;
  installSeconds: number;
  initrdSeconds: number;
  checksumSeconds: number;
  mke2fsSeconds: number;
  /** Bytes the file system uses (`du` of the tree). */
  treeBytes: number;
  initrdBytes: number;
  usrFiles: number;
}

/** One boot of the comparator. */
export interface BootCase {
  name: string;
  /** What happened to the server during the boot. */
  disturbance: string;
  reachedMultiUser: boolean;
  /** Guest clock, kernel start → multi-user.target; null if never reached. */
  multiUserSeconds: number | null;
  /** Guest clock, kernel start → systemd started on the real root (the initrd's end). */
  userspaceStartSeconds: number | null;
  /** Host clock, QEMU started → the workload's first line. */
  hostMultiUserSeconds: number | null;
  /** Guest clock: reading every file under /usr once, page cache dropped first. */
  usrReadSeconds: number | null;
  /** Guest clock: checking the SHA-256 of what was read (mostly CPU under TCG). */
  usrVerifySeconds: number | null;
  usrChecked: boolean;
  failedUnits: number | null;
  /** QEMU exited by itself after a power-off, no I/O error on the console, e2fsck clean. */
  cleanPoweroff: boolean;
  qemuSeconds: number;
  timedOut: boolean;
  /** Why the case is not clean, one line each. */
  problems: string[];
  /** Set when nbd-server was killed during the boot. */
  serverKill: ServerKill | null;
}

/** Everything bench/boot.ts measured. */
export interface BootBenchResults {
  kernel: string;
  recipe: string;
  /** Seconds to build the root tree this run; null when it came from the cache. */
  rootBuildSeconds: number | null;
  preparation: ImagePreparation;
  cases: BootCase[];
}

/** Options for {@linkcode runBootBench}. */
export interface BootBenchOptions {
  /** Also boot with nbd-server killed and restarted. */
  killRestart: boolean;
  /** Kill nbd-server this long after the guest connected its root device. */
  killAfterMs: number;
  /** Restart it this long after the kill. */
  downMs: number;
  /** Bound on each boot (QEMU is killed after it). */
  timeoutMs: number;
  log: (line: string) => void;
}

/** nbd-server on a fixed loopback port, killable and restartable. */
class NbdServer {
  #child: Deno.ChildProcess | undefined;
  #output = "";
  readonly #configPath: string;

  constructor(readonly workDir: string, readonly imagePath: string, readonly port: number) {
    this.#configPath = `${workDir}/nbd-server.conf`;
  }

  /** Starts nbd-server and waits (bounded) until it listens. */
  async start(): Promise<void> {
    await Deno.writeTextFile(
      this.#configPath,
      [
        "[generic]",
        "    listenaddr = 127.0.0.1",
        `    port = ${this.port}`,
        `[${EXPORT_NAME}]`,
        `    exportname = ${this.imagePath}`,
        "    flush = true",
        "    fua = true",
        "",
      ].join("\n"),
    );
    // -d: no fork, so this process is the one serving (and the one killed). It serves a
    // single client and exits, which is all one boot needs.
    const child = new Deno.Command("setpriv", {
      args: ["--pdeathsig", "KILL", "--", "nbd-server", "-C", this.#configPath, "-d"],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#child = child;
    const keep = async (stream: ReadableStream<Uint8Array>) => {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        this.#output = (this.#output + chunk).slice(-4000);
      }
    };
    keep(child.stdout).catch(() => {});
    keep(child.stderr).catch(() => {});
    // A connection would use up the single client -d serves, so look for the listening socket
    // instead of connecting.
    const deadline = Date.now() + 10_000;
    while (!(await isListening(this.port))) {
      const exited = await Promise.race([
        child.status.then(() => true),
        new Promise<false>((resolve) => setTimeout(() => resolve(false), 50)),
      ]);
      if (exited) throw new Error(`nbd-server exited at start: ${this.#output.trim()}`);
      if (Date.now() > deadline) throw new Error("nbd-server did not listen within 10 s");
    }
  }

  /** SIGKILL, as a crash: connections are reset. */
  async kill(): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    if (!child) return;
    try {
      child.kill("SIGKILL");
    } catch {
      // Already exited (it does after its client leaves).
    }
    await child.status;
  }
}

/** True when a TCP socket listens on 127.0.0.1:`port` (from /proc/net/tcp). */
async function isListening(port: number): Promise<boolean> {
  return (await socketStates(port)).includes("0A");
}

/** The states (hex, as /proc/net/tcp writes them) of the sockets bound to 127.0.0.1:`port`. */
async function socketStates(port: number): Promise<string[]> {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  const table = await Deno.readTextFile("/proc/net/tcp");
  return table.split("\n").map((line) => line.trim().split(/\s+/))
    .filter((fields) => fields[1] === local).map((fields) => fields[3]);
}

/** True when a client is connected to 127.0.0.1:`port` (from /proc/net/tcp). */
async function hasClient(port: number): Promise<boolean> {
  return (await socketStates(port)).includes("01");
}

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const started = performance.now();
  const value = await fn();
  return [value, (performance.now() - started) / 1000];
}

/**
 * Builds the comparator's image and initrd into `workDir` from a copy of the root tree, which
 * is removed again.
 */
export async function prepareComparatorImage(
  root: DebianRoot,
  workDir: string,
  log: (line: string) => void,
): Promise<{ imagePath: string; initrdPath: string; preparation: ImagePreparation }> {
  const tree = `${workDir}/tree`;
  try {
    const [, copySeconds] = await timed(() => copyDebianRoot(root, tree));
    log(`  copied the root tree (${copySeconds.toFixed(1)} s)`);
    const [, installSeconds] = await timed(() => installDebs(tree, ["nbd-client"]));
    log(`  installed nbd-client (${installSeconds.toFixed(1)} s)`);
    const files: TreeFile[] = [
      { path: `${WORKLOAD_DIR}/workload`, contents: WORKLOAD_SCRIPT, mode: 0o755 },
      { path: `/etc/systemd/system/${WORKLOAD_UNIT}`, contents: WORKLOAD_SERVICE },
      {
        path: `/etc/systemd/system/multi-user.target.wants/${WORKLOAD_UNIT}`,
        contents: `/etc/systemd/system/${WORKLOAD_UNIT}`,
        symlink: true,
      },
    ];
    await writeTreeFiles(tree, files);
    const initrdInTree = `/boot/initrd.img-${root.kernelVersion}`;
    const [, initrdSeconds] = await timed(() =>
      withChroot(
        tree,
        (chroot) => chroot.run(["update-initramfs", "-c", "-k", root.kernelVersion]),
      )
    );
    const initrdPath = `${workDir}/initrd.img`;
    await Deno.copyFile(`${tree}${initrdInTree}`, initrdPath);
    const initrdBytes = (await Deno.stat(initrdPath)).size;
    log(`  built the initrd (${initrdSeconds.toFixed(1)} s, ${mib(initrdBytes)})`);
    const [sums, checksumSeconds] = await timed(() => checksumTree(tree, "/usr"));
    await writeTreeFiles(tree, [{ path: `${WORKLOAD_DIR}/usr.sha256`, contents: sums }]);
    const usrFiles = sums.split("\n").filter((l) => l !== "").length;
    log(`  checksummed ${usrFiles} files under /usr (${checksumSeconds.toFixed(1)} s)`);
    const treeBytes = Number(
      (await runCommand("du", ["-sb", tree], { timeoutMs: 120_000 })).split("\t")[0],
    );
    const imagePath = `${workDir}/root.img`;
    const [, mke2fsSeconds] = await timed(() => makeExt4Image(tree, imagePath));
    log(`  made the ext4 image of ${mib(treeBytes)} (${mke2fsSeconds.toFixed(1)} s)`);
    return {
      imagePath,
      initrdPath,
      preparation: {
        copySeconds,
        installSeconds,
        initrdSeconds,
        checksumSeconds,
        mke2fsSeconds,
        treeBytes,
        initrdBytes,
        usrFiles,
      },
    };
  } finally {
    await removeTree(tree);
  }
}

/** Where each boot's whole console is kept for reading afterwards (the last run's only). */
async function consoleLogDir(): Promise<string> {
  const dir = `${vmCacheDir()}/logs`;
  await Deno.mkdir(dir, { recursive: true });
  return dir;
}

function mib(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(0)} MiB`;
}

/** Reads the outcome of one boot from its console and the image. */
async function judge(
  name: string,
  disturbance: string,
  run: BootVmResult,
  imagePath: string,
): Promise<BootCase> {
  const problems: string[] = [];
  const m = run.metrics;
  const workloadStart = run.lines.find((l) => l.text.includes("@@MARK workload-start"));
  const workloadDone = run.lines.some((l) => l.text.includes("@@MARK workload-done"));
  const poweredOff = run.lines.some((l) => /reboot: Power down/.test(l.text));
  for (const result of run.results) {
    if (!result.ok) problems.push(`${result.name}: ${result.detail}`);
  }
  const ioErrors = run.lines.filter((l) => IO_ERROR.test(l.text));
  if (ioErrors.length > 0) {
    problems.push(`${ioErrors.length} I/O error lines, first: ${ioErrors[0].text.trim()}`);
  }
  // panic=-1 and -no-reboot turn a panic into QEMU exiting 0 at once: name it for what it is.
  const panic = run.lines.find((l) => /Kernel panic/.test(l.text));
  if (panic) problems.push(`the guest kernel panicked: ${panic.text.trim()}`);
  if (run.timedOut) problems.push("QEMU was killed at the timeout");
  else if (!panic && (!poweredOff || run.qemuExitCode !== 0)) {
    problems.push(`no clean power-off (QEMU exit ${run.qemuExitCode})`);
  }
  if (!workloadDone) problems.push("the workload did not finish");
  const fsck = await new Deno.Command("e2fsck", {
    args: ["-fn", imagePath],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!fsck.success) {
    const text = new TextDecoder().decode(fsck.stdout).trim().split("\n").slice(0, 3).join("; ");
    problems.push(`e2fsck -fn: exit ${fsck.code}: ${text}`);
  }
  const usrChecked = run.results.some((r) => r.name === "usr-checksums" && r.ok);
  return {
    name,
    disturbance,
    reachedMultiUser: workloadStart !== undefined,
    multiUserSeconds: m.multi_user_s ?? null,
    userspaceStartSeconds: m.userspace_start_s ?? null,
    hostMultiUserSeconds: workloadStart ? workloadStart.atMs / 1000 : null,
    usrReadSeconds: m.usr_read_s ?? null,
    usrVerifySeconds: m.usr_verify_s ?? null,
    usrChecked,
    failedUnits: m.failed_units ?? null,
    cleanPoweroff: problems.length === 0 && poweredOff,
    qemuSeconds: run.totalMs / 1000,
    timedOut: run.timedOut,
    problems,
    serverKill: null,
  };
}

/** What happened when nbd-server was killed during a boot. */
export interface ServerKill {
  /** The guest had a connection to the server when it was killed. */
  clientConnectedAtKill: boolean;
  /** The last console line before the kill: how far the boot had come. */
  consoleAtKill: string;
  /** The restarted server got a client within this long after its restart; null if never. */
  reconnectedAfterSeconds: number | null;
}

/** True when `ms` passes before `ended` settles; false (at once) when `ended` wins. */
async function elapsesBefore(ms: number, ended: Promise<unknown>): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const elapsed = new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(true), ms));
  try {
    return await Promise.race([elapsed, ended.then(() => false)]);
  } finally {
    clearTimeout(timer);
  }
}

/** The console line nbd-client prints once the root device is connected. */
const ROOT_CONNECTED = /Connected \/dev\/nbd0/;

/**
 * Kills `server` `killAfterMs` after the guest connected its root device, restarts it `downMs`
 * later, then watches (once a second, until the VM ends) whether the guest connects to the new
 * server. Counting from the connection, not from QEMU's start, makes the kill hit a connected
 * client however slow the machine is.
 */
async function killAndRestart(
  server: NbdServer,
  disturb: { killAfterMs: number; downMs: number; timeoutMs: number },
  vm: RunningVm,
  lastLine: () => string,
  log: (line: string) => void,
): Promise<ServerKill | null> {
  try {
    await vm.waitForLine(ROOT_CONNECTED, disturb.timeoutMs);
  } catch {
    return null; // The VM ended first; its result says why.
  }
  if (!(await elapsesBefore(disturb.killAfterMs, vm.result))) return null;
  const report: ServerKill = {
    clientConnectedAtKill: await hasClient(server.port),
    consoleAtKill: lastLine(),
    reconnectedAfterSeconds: null,
  };
  log(`    killing nbd-server (client connected: ${report.clientConnectedAtKill})`);
  await server.kill();
  if (!(await elapsesBefore(disturb.downMs, vm.result))) return report;
  await server.start();
  log("    restarted nbd-server");
  const restartedAt = performance.now();
  while (await elapsesBefore(1000, vm.result)) {
    if (await hasClient(server.port)) {
      report.reconnectedAfterSeconds = (performance.now() - restartedAt) / 1000;
      log(
        `    the guest reconnected ${
          report.reconnectedAfterSeconds.toFixed(0)
        } s after the restart`,
      );
      break;
    }
  }
  return report;
}

/** One boot against a fresh nbd-server, with an optional kill and restart of the server. */
async function bootOnce(
  name: string,
  image: { imagePath: string; initrdPath: string },
  workDir: string,
  options: BootBenchOptions,
  disturb: { killAfterMs: number; downMs: number } | null,
): Promise<BootCase> {
  const server = new NbdServer(workDir, image.imagePath, freePort());
  const forward: GuestForward = { ...NBD_GUEST_FORWARD, hostPort: server.port };
  let disturbance: Promise<ServerKill | null> = Promise.resolve(null);
  try {
    await server.start();
    let lastLine = "";
    const vm = await startVm({
      initrdPath: image.initrdPath,
      append: NBDROOT_APPEND,
      forwards: [forward],
      timeoutMs: options.timeoutMs,
      onLine: (line: ConsoleLine) => {
        if (line.text.trim() !== "") lastLine = line.text.trim();
        if (/@@(TEST|METRIC|MARK|INFO)|\bnbd/i.test(line.text)) {
          options.log(`    [${(line.atMs / 1000).toFixed(1)} s] ${line.text.trim()}`);
        }
      },
    });
    if (disturb) {
      disturbance = killAndRestart(
        server,
        { ...disturb, timeoutMs: options.timeoutMs },
        vm,
        () => lastLine,
        options.log,
      );
    }
    const run = await vm.result;
    const kill = await disturbance;
    await server.kill();
    const result = await judge(
      name,
      disturb
        ? `nbd-server killed ${disturb.killAfterMs / 1000} s after the root connected, ` +
          `back ${disturb.downMs / 1000} s later`
        : "none",
      run,
      image.imagePath,
    );
    const logPath = `${await consoleLogDir()}/boot-bench-${name}.console.log`;
    await Deno.writeTextFile(logPath, run.log);
    options.log(`    console log: ${logPath}`);
    return { ...result, serverKill: kill };
  } finally {
    await disturbance.catch(() => {});
    await server.kill();
  }
}

/** Builds (or reuses) the root, prepares the comparator's image, and boots it. */
export async function runBootBench(options: BootBenchOptions): Promise<BootBenchResults> {
  const log = options.log;
  const building = performance.now();
  let built = false;
  const root = await ensureDebianRoot({
    log: (line) => {
      built ||= line.includes("building");
      log(`  ${line}`);
    },
  });
  const rootBuildSeconds = built ? (performance.now() - building) / 1000 : null;
  const workDir = await makeWorkDir("boot-bench-");
  try {
    const image = await prepareComparatorImage(root, workDir, log);
    const cases: BootCase[] = [];
    log("  booting: nbd-client root, undisturbed");
    cases.push(await bootOnce("nbdroot", image, workDir, options, null));
    if (options.killRestart) {
      // The first boot wrote to the image; start the second from the same state it left.
      log("  booting: nbd-client root, nbd-server killed and restarted");
      cases.push(
        await bootOnce("nbdroot-kill", image, workDir, options, {
          killAfterMs: options.killAfterMs,
          downMs: options.downMs,
        }),
      );
    }
    return {
      kernel: root.kernelVersion,
      recipe: root.key,
      rootBuildSeconds,
      preparation: image.preparation,
      cases,
    };
  } finally {
    await removeTree(workDir);
  }
}

function seconds(value: number | null): string {
  return value === null ? "–" : `${value.toFixed(1)} s`;
}

/** A markdown table row. */
function row(cells: (string | number)[]): string {
  return `| ${cells.join(" | ")} |`;
}

/** The results as markdown tables: preparing the image, then one row per boot. */
export function formatBootTable(results: BootBenchResults): string {
  const p = results.preparation;
  const build = results.rootBuildSeconds === null ? "cached" : seconds(results.rootBuildSeconds);
  const lines = [
    `${DEBIAN_SUITE} root over NBD, kernel ${results.kernel}, QEMU TCG, root recipe ${results.recipe}`,
    "",
    row(["step", "time"]),
    row(["---", "---"]),
    row(["build the root tree (mmdebstrap)", build]),
    row(["copy the tree", seconds(p.copySeconds)]),
    row(["install nbd-client", seconds(p.installSeconds)]),
    row([`update-initramfs (initrd ${mib(p.initrdBytes)})`, seconds(p.initrdSeconds)]),
    row([`checksum /usr (${p.usrFiles} files)`, seconds(p.checksumSeconds)]),
    row([`mke2fs -d (${mib(p.treeBytes)} of files)`, seconds(p.mke2fsSeconds)]),
    "",
    "Guest clock from kernel start; host clock from QEMU start.",
    "",
    row([
      "boot",
      "server",
      "initrd done",
      "multi-user.target",
      "(host clock)",
      "/usr cold read",
      "/usr SHA-256 check",
      "failed units",
      "clean power-off",
      "QEMU total",
    ]),
    row(Array(10).fill("---")),
  ];
  for (const c of results.cases) {
    lines.push(row([
      c.name,
      c.disturbance,
      seconds(c.userspaceStartSeconds),
      c.reachedMultiUser ? seconds(c.multiUserSeconds) : "never",
      seconds(c.hostMultiUserSeconds),
      seconds(c.usrReadSeconds),
      c.usrVerifySeconds === null
        ? "–"
        : `${seconds(c.usrVerifySeconds)} ${c.usrChecked ? "ok" : "BAD"}`,
      c.failedUnits ?? "–",
      c.cleanPoweroff ? "yes" : "no",
      `${seconds(c.qemuSeconds)}${c.timedOut ? " (timeout)" : ""}`,
    ]));
  }
  for (const c of results.cases) {
    const kill = c.serverKill;
    if (kill) {
      const back = kill.reconnectedAfterSeconds === null
        ? "never reconnected"
        : `reconnected ${kill.reconnectedAfterSeconds.toFixed(0)} s after the restart`;
      lines.push(
        `- ${c.name}: killed with the guest ${
          kill.clientConnectedAtKill ? "" : "not "
        }connected, ` +
          `console at "${kill.consoleAtKill}"; ${back}`,
      );
    }
    for (const problem of c.problems) lines.push(`- ${c.name}: ${problem}`);
  }
  return lines.join("\n");
}

const usage = "usage: deno run -A bench/boot.ts [--kill-restart] [--kill-after S] [--down S] " +
  "[--timeout S]";

if (import.meta.main) {
  let values;
  try {
    ({ values } = parseArgs({
      args: Deno.args,
      options: {
        "kill-restart": { type: "boolean" },
        "kill-after": { type: "string", default: "20" },
        down: { type: "string", default: "3" },
        timeout: { type: "string", default: "1800" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (err) {
    console.error(`bench/boot.ts: ${(err as Error).message.split("\n")[0]}\n${usage}`);
    Deno.exit(2);
  }
  if (values.help) {
    console.log(usage);
    Deno.exit(0);
  }
  for (const name of ["kill-after", "down", "timeout"] as const) {
    if (!(Number(values[name]) > 0)) {
      console.error(`bench/boot.ts: --${name} takes a positive number of seconds\n${usage}`);
      Deno.exit(2);
    }
  }
  if (Deno.uid() !== 0) {
    console.error("bench/boot.ts: needs root (mmdebstrap, chroot, mounts)");
    Deno.exit(2);
  }
  const ensured = await ensurePackages("bench", VM_BOOT_PACKAGES, "for the boot benchmark");
  if (!ensured.ok) {
    console.error(`bench/boot.ts: ${ensured.reason}`);
    Deno.exit(2);
  }
  const log = (line: string) => console.error(line);
  let results: BootBenchResults;
  try {
    results = await runBootBench({
      killRestart: values["kill-restart"] ?? false,
      killAfterMs: Number(values["kill-after"]) * 1000,
      downMs: Number(values.down) * 1000,
      timeoutMs: Number(values.timeout) * 1000,
      log,
    });
  } catch (err) {
    console.error(`bench/boot.ts: ${err instanceof Error ? err.message : err}`);
    Deno.exit(1);
  }
  console.log(formatBootTable(results));
  console.log(JSON.stringify(results));
  Deno.exit(results.cases[0]?.cleanPoweroff ? 0 : 1);
}
