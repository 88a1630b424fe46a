/**
 * A real diod that failover tests and the failover benchmark can crash
 * (SIGKILL: the kernel resets its connections), hang (SIGSTOP: sockets stay
 * open, nothing answers), resume (SIGCONT) and restart on the same port, as
 * a rebooting server comes back at the same address. `startDiod` in
 * tools/servers.ts picks a new port every time, so it cannot do the
 * last part.
 *
 * @module
 */

import { findProgram } from "./packages.ts";
import { freePort, type RunningMunged, serverUnavailable, withMunged } from "./servers.ts";

/** A diod on a fixed loopback port that can be killed, stopped and started again. */
export interface RestartableDiod {
  readonly port: number;
  /** The exported directory (symlinks resolved). */
  readonly exportDir: string;
  /** The process id of the running diod (changes on restart); 0 when none runs. */
  readonly pid: number;
  /** True while a diod process exists (running or stopped), false once it exited. */
  readonly alive: boolean;
  /** The tail of the current (or last) diod process's stderr. */
  readonly output: string;
  /** The SPEC of file `name` in the export. */
  specFor(name: string): string;
  /** SIGKILL and wait for the exit: connections are reset, connects are refused. */
  crash(): Promise<void>;
  /** SIGSTOP: the process freezes with its sockets open; connects still complete. */
  hang(): void;
  /** SIGCONT after {@link hang}. */
  resume(): void;
  /**
   * Start diod again on the same port; resolves once it accepts connections,
   * with `performance.now()` at that moment.
   */
  restart(): Promise<number>;
  /** Kill it for good and remove its work dir. */
  stop(): Promise<void>;
}

/** Says why the helpers cannot run here, or null. */
export function diodUnavailable(): string | null {
  return serverUnavailable("diod");
}

/** Processes still running, killed if the test process exits without stop(). */
const live = new Set<Deno.ChildProcess>();
globalThis.addEventListener("unload", () => {
  for (const child of live) {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }
});

/**
 * Start diod exporting `dir` on a free port (or `port`); with `options.auth`
 * it requires MUNGE authentication through that munged (as `startDiod`).
 */
export async function startRestartableDiod(
  dir: string,
  port = freePort(),
  options: { auth?: RunningMunged } = {},
): Promise<RestartableDiod> {
  // Where serverUnavailable found it: sbin may not be on PATH.
  const binary = findProgram("diod") ?? "diod";
  const exportDir = await Deno.realPath(dir);
  const workDir = await Deno.makeTempDir({ prefix: "9nbd-fodiod-" });
  const config = `${workDir}/diod.conf`;
  await Deno.writeTextFile(config, `exports = { { path = ${JSON.stringify(exportDir)} } }\n`);
  let child: Deno.ChildProcess | undefined;
  let status: Promise<Deno.CommandStatus> | undefined;
  let exited = true;
  let output = "";

  const spawn = async (): Promise<number> => {
    // A port freed by SIGKILL can take a moment to be bindable again.
    for (let attempt = 0;; attempt++) {
      output = "";
      // SIGPIPE ignored (withMunged does it), as systemd starts services: diod 1.0.24 is
      // killed by SIGPIPE when, resumed after SIGSTOP, it answers on a connection the client
      // has closed meanwhile.
      const command = withMunged(options.auth, binary, [
        ...["-f", ...(options.auth ? [] : ["-n"]), "-c", config, "-N", "-S"],
        ...(Deno.uid() === 0 ? ["-U", "root"] : []),
        ...["-L", "stderr", "-l", `127.0.0.1:${port}`],
      ]);
      const proc = new Deno.Command(command.binary, {
        args: command.args,
        stdin: "null",
        stdout: "null",
        stderr: "piped",
      }).spawn();
      live.add(proc);
      child = proc;
      exited = false;
      status = proc.status.then((s) => {
        if (child === proc) exited = true;
        live.delete(proc);
        return s;
      });
      void (async () => {
        const decoder = new TextDecoder();
        try {
          for await (const chunk of proc.stderr) {
            output = (output + decoder.decode(chunk, { stream: true })).slice(-8192);
          }
        } catch {
          // Killed mid-write.
        }
      })();
      const deadline = performance.now() + 15_000;
      while (!exited && performance.now() < deadline) {
        try {
          const conn = await Deno.connect({ hostname: "127.0.0.1", port });
          const listeningAt = performance.now();
          conn.close();
          return listeningAt;
        } catch {
          await new Promise((r) => setTimeout(r, 5));
        }
      }
      if (!exited) {
        proc.kill("SIGKILL");
        await status;
      } else await status;
      if (attempt >= 20 || !/in use/i.test(output)) {
        throw new Error(`diod on port ${port} did not start: ${output.trim()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  const signal = (name: Deno.Signal) => {
    try {
      child?.kill(name);
    } catch {
      // Already exited.
    }
  };

  const kill = async () => {
    if (!child || !status) return;
    signal("SIGKILL");
    await status;
    child = undefined;
    status = undefined;
  };

  await spawn();
  return {
    port,
    exportDir,
    get pid() {
      return child?.pid ?? 0;
    },
    get alive() {
      return child !== undefined && !exited;
    },
    get output() {
      return output;
    },
    specFor: (name) => `127.0.0.1:${port}:${exportDir}/${name.replace(/^\/+/, "")}`,
    crash: kill,
    hang: () => signal("SIGSTOP"),
    resume: () => signal("SIGCONT"),
    async restart() {
      await kill();
      return await spawn();
    },
    async stop() {
      await kill();
      await Deno.remove(workDir, { recursive: true }).catch(() => {});
    },
  };
}
