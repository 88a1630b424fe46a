/**
 * How 9nbd runs itself: the V8 flags every long-running 9nbd process gets,
 * and the command that starts this program again (for the attach daemon).
 *
 * @module
 */

/**
 * V8 flags for the daemon, `proxy` and `export`. The data path makes many
 * short-lived objects (a request, its promise, its reply); left to itself V8
 * grows the young generation to tens of MiB, which buys nothing here. Capped
 * at 4 MiB semi-spaces, the proxy's peak RSS under fio (random 4 KiB QD32,
 * then sequential 1 MiB QD8) went from 147 to 98 MiB with the same
 * throughput. `deno compile` bakes these into the binary; `deno run` needs
 * them on its command line (flags set after start-up do not resize the heap).
 */
export const V8_FLAGS: readonly string[] = ["--max-semi-space-size=4"];

/** `--v8-flags=...` for a `deno run` or `deno compile` command line. */
export function v8FlagsArgument(): string {
  return `--v8-flags=${V8_FLAGS.join(",")}`;
}

/** How to start this program again: `deno run` of main.ts, or the compiled binary. */
export function selfCommand(): string[] {
  const exe = Deno.execPath();
  if (exe.endsWith("/deno")) {
    return [exe, "run", "-A", v8FlagsArgument(), new URL(Deno.mainModule).pathname];
  }
  return [exe];
}
