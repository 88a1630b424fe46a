/**
 * Starts and stops real 9P2000.L servers (diod and nfs-ganesha) on free
 * loopback TCP ports, for the tiers of the test suite that run 9nbd against
 * the real thing.
 *
 * Facts this module relies on (diod 1.0.24, nfs-ganesha 4.3 on Debian 12;
 * found by experiment with raw 9P frames against the real servers):
 *
 * - diod serves any path under an export: a client attaches with the image
 *   file's absolute path as aname and the attach fid *is* the file. An aname
 *   outside every export gets Rlerror(EPERM); a missing file under an export
 *   gets Rlerror(ENOENT). diod cannot listen on an IPv6 literal (its `-l`
 *   parser takes `[::1]:PORT` as a service name), so it is IPv4 only here.
 * - nfs-ganesha attaches only to directories: aname = the export Path (with or
 *   without a trailing slash) or a directory below it; the client then walks
 *   to the file. An aname outside every export gets EACCES.
 *   Its Tauth answers EOPNOTSUPP, so a client attaches with afid = NOFID. It
 *   reports errors as message type 107 (the 9P2000 Rerror number) carrying a
 *   9P2000.L body, `ecode[4]`. Its 9P listener binds the wildcard address of
 *   both families, so `[::1]` reaches it as well as 127.0.0.1.
 * - diod checks a read-only export at Tlopen and Twrite (EROFS); nfs-ganesha
 *   4.3's 9P code ignores the export's Access_Type (even `None`) and writes.
 * - Both grant msize 65536 at most. A Tread/Twrite count above msize - 24
 *   gets EIO from diod; ganesha answers ERANGE only above msize - 12; a frame
 *   larger than msize makes either server drop the connection.
 * - nfs-ganesha 4.3 can crash (SIGSEGV in libganesha_nfsd) shortly after an
 *   attach whose aname names something *inside* an export that is not a
 *   directory or does not exist. Tests must attach to the export itself and
 *   walk from there; {@link RunningServer.specFor} does exactly that.
 *
 * @module
 */

import { dirname } from "node:path";
import { findProgram, isFile } from "./packages.ts";

/** Which 9P server implementation a {@link RunningServer} is. */
export type ServerKind = "diod" | "ganesha";

/** A 9P server process started by {@link startDiod} or {@link startGanesha}. */
export interface RunningServer {
  /** Which implementation this is. */
  kind: ServerKind;
  /** The address the server listens on, as a client should dial it (no brackets). */
  host: string;
  /** The TCP port the server accepts 9P connections on. */
  port: number;
  /** How a client reaches a file NAME inside the served dir: a 9nbd SPEC string. */
  specFor(name: string): string;
  /** The served directory, as an absolute path with symlinks resolved. */
  exportDir: string;
  /** Stops the server (SIGTERM, then SIGKILL after a bound), waits for it to exit, cleans up. */
  stop(): Promise<void>;
  /** The server's process id. */
  pid: number;
}

/** What to serve and how. */
export interface ServerOptions {
  /** The directory to export; it must exist. */
  dir: string;
  /**
   * Export read-only. diod then refuses writes itself (Tlopen for writing and
   * Twrite get Rlerror(EROFS)). nfs-ganesha 4.3 gets `Access_Type = RO` but
   * its 9P code ignores export access types, so writes still succeed: test
   * server-side refusal against diod only.
   */
  readOnly?: boolean;
  /**
   * Loopback address to listen on (default `127.0.0.1`). nfs-ganesha always
   * listens on every address, so for it this only chooses what {@link RunningServer.host}
   * and the SPEC say (use `::1` to test IPv6 SPECs); diod accepts IPv4 only.
   */
  host?: string;
  /** How long to wait for the port to accept connections (default 15 000 ms). */
  startTimeoutMs?: number;
  /**
   * Admit only clients whose source port is below 1024: diod's export option
   * `privport` (a port 512-1023, else EPERM), nfs-ganesha's `PrivilegedPort`.
   */
  privilegedPort?: boolean;
  /**
   * diod only: require MUNGE authentication (diod's default, without `-n`),
   * with credentials decoded by this munged. diod (libmunge) only reaches
   * munged at the default socket path, so unless `auth` is there, diod runs
   * in a private mount namespace that has `auth.runDir` on /run.
   */
  auth?: RunningMunged;
}

const startTimeoutDefaultMs = 15_000;
/** A freshly picked free port can be taken by someone else before the server binds it. */
const startAttempts = 3;
/** Keep only the tail of a server's output: enough to explain a failure, bounded in memory. */
const keptOutputBytes = 64 * 1024;

/** The VFS FSAL is a separate Debian package (nfs-ganesha-vfs); without it no export loads. */
const ganeshaVfsFsalPaths = [
  "/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so",
  "/usr/lib/aarch64-linux-gnu/ganesha/libfsalvfs.so",
  "/usr/lib64/ganesha/libfsalvfs.so",
  "/usr/lib/ganesha/libfsalvfs.so",
];

/**
 * Servers still running (process → its work dir), so a test process that dies
 * without calling stop() still leaves no server and no temp dir behind.
 */
const live = new Map<Deno.ChildProcess, string>();
globalThis.addEventListener("unload", () => {
  for (const [child, workDir] of live) {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    try {
      Deno.removeSync(workDir, { recursive: true });
    } catch {
      // Best effort: the process is being torn down anyway.
    }
  }
});

/**
 * Returns a TCP port that is free on the loopback interface right now (the
 * kernel picks it when we bind port 0). Another process may take it before the
 * caller binds it; the start functions retry with a new port when that happens.
 */
export function freePort(hostname = "127.0.0.1"): number {
  const listener = Deno.listen({ hostname, port: 0, transport: "tcp" });
  try {
    return (listener.addr as Deno.NetAddr).port;
  } finally {
    listener.close();
  }
}

/**
 * Says why a server kind cannot run on this machine (binary not installed,
 * VFS backend missing, not root), or returns null when it can. A test tier
 * prints `SKIPPED: <reason>` instead of failing.
 */
export function serverUnavailable(kind: ServerKind): string | null {
  if (kind === "diod") {
    return findProgram("diod") === null ? "diod is not installed (Debian package diod)" : null;
  }
  if (findProgram("ganesha.nfsd") === null) {
    return "ganesha.nfsd is not installed (Debian package nfs-ganesha)";
  }
  if (!ganeshaVfsFsalPaths.some(isFile)) {
    return "nfs-ganesha's VFS backend is not installed (Debian package nfs-ganesha-vfs)";
  }
  // The VFS backend opens files by handle (open_by_handle_at), which needs
  // CAP_DAC_READ_SEARCH, and the tests rely on root's access to the export.
  if (Deno.uid() !== 0) return "nfs-ganesha must run as root";
  return null;
}

/**
 * Starts diod exporting `dir`, with authentication off unless `options.auth`
 * names a munged, and waits until it accepts connections. Clients attach
 * with the image file's absolute path.
 *
 * @throws Error with diod's output when it exits or never listens.
 */
export async function startDiod(options: ServerOptions): Promise<RunningServer> {
  const binary = findProgram("diod");
  if (binary === null) throw new Error(serverUnavailable("diod") ?? "diod not found");
  const host = options.host ?? "127.0.0.1";
  if (host.includes(":")) {
    throw new Error(`diod cannot listen on the IPv6 address ${host}; use nfs-ganesha for IPv6`);
  }
  const exportDir = await Deno.realPath(options.dir);
  const exportOptions = [
    ...(options.readOnly ? ["ro"] : []),
    ...(options.privilegedPort ? ["privport"] : []),
  ];
  return await startWithRetries("diod", host, options, (port, workDir) => ({
    ...withMunged(options.auth, binary, [
      "-f", // stay in the foreground, so we own the process and its stderr
      // No authentication (no MUNGE): Tauth answers ENOENT, attach with NOFID.
      ...(options.auth ? [] : ["-n"]),
      // Our own config holds only the export: `-e` cannot carry export options
      // (`-o ro` applies only to `-E` exports), and the host's /etc/diod.conf
      // must not leak in.
      "-c",
      `${workDir}/diod.conf`,
      // Any attaching uid is accepted (no passwd lookup) and squashed to one
      // user, so tests need not care which uid the client sends. As root the
      // squash user is root, so the export's files are always accessible; as
      // another user diod uses its own effective uid instead.
      "-N",
      "-S",
      ...(Deno.uid() === 0 ? ["-U", "root"] : []),
      "-L",
      "stderr",
      "-l",
      `${host}:${port}`,
    ]),
    files: {
      "diod.conf": `exports = { { path = ${luaString(exportDir)}${
        exportOptions.length ? `, opts = ${luaString(exportOptions.join(","))}` : ""
      } } }\n`,
    },
    stopGraceMs: 3_000,
    specFor: (name) => `${hostForSpec(host)}:${port}:${joinPath(exportDir, name)}`,
    exportDir,
  }));
}

/**
 * Starts nfs-ganesha serving only 9P, with a VFS export of `dir`, and waits
 * until it accepts connections. Its config, pid file, log and recovery
 * directory live in a temp dir that {@link RunningServer.stop} removes. It
 * registers nothing with rpcbind (no NFS, NLM or RQUOTA listeners).
 *
 * @throws Error with ganesha's log when it exits or never listens.
 */
export async function startGanesha(options: ServerOptions): Promise<RunningServer> {
  const binary = findProgram("ganesha.nfsd");
  const unavailable = serverUnavailable("ganesha");
  if (binary === null || unavailable !== null) throw new Error(unavailable ?? "ganesha not found");
  const host = options.host ?? "127.0.0.1";
  const exportDir = await Deno.realPath(options.dir);
  return await startWithRetries("ganesha", host, options, (port, workDir) => ({
    binary,
    args: [
      "-F", // foreground: we own the process
      "-f",
      `${workDir}/ganesha.conf`,
      "-L",
      `${workDir}/ganesha.log`,
      "-p",
      `${workDir}/ganesha.pid`,
    ],
    files: {
      "ganesha.conf": ganeshaConfig({
        port,
        exportDir,
        workDir,
        readOnly: options.readOnly ?? false,
        privilegedPort: options.privilegedPort ?? false,
      }),
    },
    logFile: "ganesha.log",
    // A clean ganesha exit takes about 6 s (it drains every subsystem); a test
    // server has no state worth that wait.
    stopGraceMs: 500,
    specFor: (name) => `${hostForSpec(host)}:${port}:${exportDir}//${name.replace(/^\/+/, "")}`,
    exportDir,
  }));
}

/** A munged started by {@link startMunged}: its own key, its own socket. */
export interface RunningMunged {
  /** The socket clients are given (`--munge-socket`). */
  socket: string;
  /**
   * A directory holding `munge/munge.socket.2`: mounted on /run in a private
   * mount namespace ({@link withMunged}), it is where libmunge's default
   * path finds this munged, for programs that cannot be told another socket
   * (diod, diodcat).
   */
  runDir: string;
  /** The key its credentials are made and checked with. */
  keyFile: string;
  /** munged's process id. */
  pid: number;
  /** SIGTERM and wait for the exit: munged removes its socket. */
  stop(): Promise<void>;
  /** SIGKILL and wait: the socket file stays behind, refusing connections. */
  kill(): Promise<void>;
}

/** libmunge's default socket path: munged's default. */
const DEFAULT_MUNGE_SOCKET = "/run/munge/munge.socket.2";

/** Why {@link startMunged} and {@link withMunged} cannot run here, or null. */
export function mungeUnavailable(): string | null {
  for (const program of ["munged", "mungekey"]) {
    if (findProgram(program) === null) return `${program} is not installed (Debian package munge)`;
  }
  if (findProgram("unshare") === null) return "unshare is not installed (Debian util-linux)";
  if (Deno.uid() !== 0) return "a private mount namespace for diod needs root";
  return null;
}

/**
 * Starts munged with a key made for it (or `keyFile`, to share one), on a
 * socket in a temp dir (or at `socket`: in a VM, where no other munged
 * runs, the default path serves diod without a mount namespace), and waits
 * until it answers. Never touches a munged the machine runs itself.
 */
export async function startMunged(
  options: { keyFile?: string; socket?: string } = {},
): Promise<RunningMunged> {
  const unavailable = mungeUnavailable();
  if (unavailable !== null) throw new Error(unavailable);
  // munged checks that its socket's directory is reachable by everyone.
  const workDir = await Deno.makeTempDir({ prefix: "9nbd-munged-" });
  await Deno.chmod(workDir, 0o755);
  const runDir = `${workDir}/run`;
  await Deno.mkdir(`${runDir}/munge`, { recursive: true, mode: 0o755 });
  await Deno.chmod(runDir, 0o755);
  await Deno.chmod(`${runDir}/munge`, 0o755);
  const socket = options.socket ?? `${runDir}/munge/munge.socket.2`;
  if (options.socket) await Deno.mkdir(dirname(options.socket), { recursive: true, mode: 0o755 });
  const keyFile = options.keyFile ?? `${workDir}/munge.key`;
  if (!options.keyFile) {
    const made = await new Deno.Command(findProgram("mungekey")!, {
      args: ["--create", "--keyfile", keyFile],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!made.success) throw new Error(`mungekey: ${new TextDecoder().decode(made.stderr)}`);
  }
  const { child, output, drained, status, exited } = spawnTracked(findProgram("munged")!, [
    "--foreground",
    `--socket=${socket}`,
    `--key-file=${keyFile}`,
    `--log-file=${workDir}/munged.log`,
    `--pid-file=${workDir}/munged.pid`,
    `--seed-file=${workDir}/munged.seed`,
  ], workDir);
  const end = async (signalName: Deno.Signal) => {
    if (!exited()) signal(child, signalName);
    await status;
    await drained;
  };
  const deadline = Date.now() + startTimeoutDefaultMs;
  for (;;) {
    try {
      (await Deno.connect({ transport: "unix", path: socket })).close();
      break;
    } catch (error) {
      if (exited() || Date.now() > deadline) {
        await end("SIGKILL");
        await Deno.remove(workDir, { recursive: true }).catch(() => {});
        throw new Error(`munged did not start: ${output.text().trim()}`, { cause: error });
      }
    }
    await sleep(25);
  }
  let removed = false;
  const cleanUp = async () => {
    if (removed) return;
    removed = true;
    if (options.socket) await Deno.remove(options.socket).catch(() => {});
    await Deno.remove(workDir, { recursive: true }).catch(() => {});
  };
  return {
    socket,
    runDir,
    keyFile,
    pid: child.pid,
    async stop() {
      await end("SIGTERM");
      await cleanUp();
    },
    async kill() {
      await end("SIGKILL");
    },
  };
}

/**
 * `binary args...` as a command that reaches `munged` at libmunge's default
 * socket path: as it is when munged listens there, else inside a private
 * mount namespace with munged's `runDir` mounted on /run (so nothing outside
 * the command sees it, and a munged the machine runs is left alone). SIGPIPE
 * is ignored, as systemd starts services: diod 1.0.24 dies of it when it
 * answers on a connection its client has closed.
 */
export function withMunged(
  munged: RunningMunged | undefined,
  binary: string,
  args: string[],
): { binary: string; args: string[] } {
  if (!munged || munged.socket === DEFAULT_MUNGE_SOCKET) {
    return { binary: "sh", args: ["-c", `trap '' PIPE; exec "$0" "$@"`, binary, ...args] };
  }
  return {
    binary: findProgram("unshare") ?? "unshare",
    args: [
      "--mount",
      "--propagation",
      "private",
      "sh",
      "-c",
      `mount --bind "$0" /run && trap '' PIPE && exec "$@"`,
      munged.runDir,
      binary,
      ...args,
    ],
  };
}

/** Everything needed to run one server on one port. */
interface LaunchPlan {
  binary: string;
  args: string[];
  /** Files to write into the work dir before starting (name → contents). */
  files?: Record<string, string>;
  /** A file in the work dir to show when start fails (ganesha logs there, not to stderr). */
  logFile?: string;
  /** How long stop() waits after SIGTERM before SIGKILL. */
  stopGraceMs: number;
  specFor(name: string): string;
  exportDir: string;
}

async function startWithRetries(
  kind: ServerKind,
  host: string,
  options: ServerOptions,
  plan: (port: number, workDir: string) => LaunchPlan,
): Promise<RunningServer> {
  const deadline = Date.now() + (options.startTimeoutMs ?? startTimeoutDefaultMs);
  let lastError: unknown;
  for (let attempt = 1; attempt <= startAttempts; attempt++) {
    const workDir = await Deno.makeTempDir({ prefix: `9nbd-${kind}-` });
    try {
      const port = freePort(host.includes(":") ? "::1" : host);
      return await launch(kind, host, port, workDir, plan(port, workDir), deadline);
    } catch (error) {
      await Deno.remove(workDir, { recursive: true }).catch(() => {});
      lastError = error;
      // Only a lost race for the port is worth another try; anything else
      // (bad config, missing export) fails the same way again.
      if (!(error instanceof PortTakenError) || Date.now() >= deadline) break;
    }
  }
  throw lastError;
}

/** The server exited because its port was taken between freePort() and bind(). */
class PortTakenError extends Error {
  override name = "PortTakenError";
}

async function launch(
  kind: ServerKind,
  host: string,
  port: number,
  workDir: string,
  plan: LaunchPlan,
  deadline: number,
): Promise<RunningServer> {
  for (const [name, contents] of Object.entries(plan.files ?? {})) {
    await Deno.writeTextFile(`${workDir}/${name}`, contents);
  }
  const { child, output, drained, status, exited: hasExited } = spawnTracked(
    plan.binary,
    plan.args,
    workDir,
  );

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      await terminate(child, status, hasExited, plan.stopGraceMs);
      await drained;
      await Deno.remove(workDir, { recursive: true }).catch(() => {});
    })();
    return stopping;
  };

  const describe = async (why: string): Promise<string> => {
    let text = `${kind} ${why} (pid ${child.pid}, ${host}:${port})`;
    const out = output.text().trim();
    if (out !== "") text += `\n--- output ---\n${out}`;
    if (plan.logFile !== undefined) {
      const log = await readTail(`${workDir}/${plan.logFile}`);
      if (log !== "") text += `\n--- ${plan.logFile} ---\n${log}`;
    }
    return text;
  };

  try {
    await waitForPort(host, port, deadline, hasExited);
  } catch (error) {
    // Give a dying server a moment so its last words reach the pipes and log.
    await Promise.race([status, sleep(200)]);
    const message = await describe(
      hasExited() ? "exited before it accepted connections" : "did not accept connections in time",
    );
    await terminate(child, status, hasExited, plan.stopGraceMs);
    await drained;
    const portTaken = /address already in use|EADDRINUSE/i.test(message) && hasExited();
    throw portTaken
      ? new PortTakenError(message, { cause: error })
      : new Error(message, { cause: error });
  }

  return {
    kind,
    host,
    port,
    specFor: plan.specFor,
    exportDir: plan.exportDir,
    stop,
    pid: child.pid,
  };
}

/** A child process that is killed if the test process exits first, its output's tail kept. */
interface Tracked {
  child: Deno.ChildProcess;
  output: OutputTail;
  /** Both pipes drained: the process and its output are done. */
  drained: Promise<unknown>;
  status: Promise<Deno.CommandStatus>;
  exited(): boolean;
}

/** Start `binary args...` in `workDir`, tracked in {@link live} until it exits. */
function spawnTracked(binary: string, args: string[], workDir: string): Tracked {
  const child = new Deno.Command(binary, {
    args,
    cwd: workDir,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  live.set(child, workDir);
  const output = new OutputTail();
  // Drain both pipes, or a chatty server blocks on a full pipe.
  const drained = Promise.all([output.drain(child.stdout), output.drain(child.stderr)]);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    live.delete(child);
    return s;
  });
  return { child, output, drained, status, exited: () => exited };
}

/** Keeps the last {@link keptOutputBytes} of a process's stdout and stderr. */
class OutputTail {
  #chunks: Uint8Array[] = [];
  #bytes = 0;

  async drain(stream: ReadableStream<Uint8Array>): Promise<void> {
    try {
      for await (const chunk of stream) {
        this.#chunks.push(chunk);
        this.#bytes += chunk.length;
        while (this.#bytes > keptOutputBytes && this.#chunks.length > 1) {
          this.#bytes -= this.#chunks.shift()!.length;
        }
      }
    } catch {
      // The process died mid-write; what we have is all there is.
    }
  }

  text(): string {
    const all = new Uint8Array(this.#bytes);
    let at = 0;
    for (const chunk of this.#chunks) {
      all.set(chunk, at);
      at += chunk.length;
    }
    return new TextDecoder().decode(all);
  }
}

async function waitForPort(
  host: string,
  port: number,
  deadline: number,
  hasExited: () => boolean,
): Promise<void> {
  let lastError: unknown;
  while (!hasExited() && Date.now() < deadline) {
    try {
      const conn = await Deno.connect({ hostname: host, port, transport: "tcp" });
      conn.close();
      return;
    } catch (error) {
      lastError = error;
    }
    await sleep(25);
  }
  throw lastError ?? new Error("server exited");
}

/** SIGTERM, wait up to `graceMs`, then SIGKILL; always waits for the exit. */
async function terminate(
  child: Deno.ChildProcess,
  status: Promise<Deno.CommandStatus>,
  hasExited: () => boolean,
  graceMs: number,
): Promise<void> {
  if (!hasExited()) {
    signal(child, "SIGTERM");
    const timer = sleep(graceMs);
    await Promise.race([status, timer]);
    timer.cancel();
    if (!hasExited()) signal(child, "SIGKILL");
  }
  await status;
}

function signal(child: Deno.ChildProcess, name: Deno.Signal): void {
  try {
    child.kill(name);
  } catch {
    // It exited between the check and the signal.
  }
}

/** A timer that can be cancelled, so a finished stop() leaves no timer for the sanitizers. */
function sleep(ms: number): Promise<void> & { cancel(): void } {
  let id: ReturnType<typeof setTimeout> | undefined;
  let settle = () => {};
  const promise = new Promise<void>((resolve) => {
    settle = resolve;
    id = setTimeout(resolve, ms);
  });
  return Object.assign(promise, {
    cancel() {
      clearTimeout(id);
      settle();
    },
  });
}

async function readTail(path: string): Promise<string> {
  try {
    const text = await Deno.readTextFile(path);
    return text.slice(-keptOutputBytes).trim();
  } catch {
    return "";
  }
}

function ganeshaConfig(
  p: {
    port: number;
    exportDir: string;
    workDir: string;
    readOnly: boolean;
    privilegedPort: boolean;
  },
): string {
  // Paths are quoted: the ganesha config lexer splits unquoted words on some
  // punctuation a temp path could contain.
  return `# Generated by 9nbd tools/servers.ts
NFS_CORE_PARAM {
  # 9P only: no NFS, mount, NLM or RQUOTA listeners, so nothing goes to rpcbind.
  Protocols = 9P;
  Enable_NLM = false;
  Enable_RQUOTA = false;
  Enable_UDP = false;
}
NFSv4 {
  # Keep recovery state in our temp dir and skip the 90 s grace period.
  RecoveryRoot = "${p.workDir}/recovery";
  Graceless = true;
}
NFS_KRB5 {
  Active_krb5 = false;
  CCacheDir = "${p.workDir}";
}
_9P {
  _9P_TCP_Port = ${p.port};
  # _9P_TCP_Msize stays at its default, 65536: ganesha 4.3 grants a larger
  # msize but crashes on a Tread of more than 64 KiB.
}
EXPORT {
  Export_Id = 1;
  Path = "${p.exportDir}";
  Pseudo = "${p.exportDir}";
  Protocols = 9P;
  Access_Type = ${p.readOnly ? "RO" : "RW"};
  PrivilegedPort = ${p.privilegedPort};
  # Tests run as root and expect root's access; ganesha squashes root by default.
  Squash = No_Root_Squash;
  FSAL { Name = VFS; }
}
LOG {
  Default_Log_Level = EVENT;
}
`;
}

/** diod's config is Lua: a double-quoted string with backslash escapes. */
function luaString(text: string): string {
  return `"${text.replace(/[\\"]/g, (c) => `\\${c}`).replace(/\n/g, "\\n")}"`;
}

function hostForSpec(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}

function joinPath(dir: string, name: string): string {
  return `${dir.replace(/\/+$/, "")}/${name.replace(/^\/+/, "")}`;
}
