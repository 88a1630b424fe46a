/**
 * What `9nbd export` serves: a table of exported roots (image files and
 * directories of image files) and the one function that turns a name inside
 * a root into a real path, {@link ExportTable.resolve}. Every path a client
 * reaches goes through it, so this is where escapes are stopped:
 *
 * - names are single components: empty names, names with `/` or NUL, and
 *   `..` above the root are refused;
 * - the result is resolved with realpath (following every symlink) and must
 *   be the root itself or lie under it, so a symlink pointing out is refused;
 * - only regular files and directories are served (no devices, FIFOs,
 *   sockets: opening a FIFO could block a worker forever);
 * - a file is opened with O_NOFOLLOW and its (dev, ino) compared with what
 *   was checked, so swapping a component for a symlink after the check
 *   cannot redirect the open.
 *
 * @module
 */

import { constants } from "node:fs";
import { open as openFile } from "node:fs/promises";
import type { FileHandle } from "node:fs/promises";
import { resolve as resolvePath } from "node:path";
import { Errno, errnoOf } from "../errno.ts";
import { P9Error } from "../errors.ts";
import { type Qid, QidType } from "../p9/wire.ts";

/** One exported path. */
export interface ExportRoot {
  /** As the user wrote it on the command line. */
  given: string;
  /** Absolute, as written (symlinks not resolved). */
  absolute: string;
  /** realpath of it: what every reachable path must lie under. */
  real: string;
  isDirectory: boolean;
}

/** A file or directory a fid points at, already checked to be inside its root. */
export interface Node {
  root: ExportRoot;
  /** Components from the root, as the client walked them (never `..`). */
  names: string[];
  /** The real path (symlinks resolved). */
  real: string;
  stat: Deno.FileInfo;
  qid: Qid;
}

function p9error(errno: number, operation: string): P9Error {
  return new P9Error(errno, operation);
}

/** The qid of a stat: the inode number is unique on one file system. */
export function qidOf(stat: Deno.FileInfo): Qid {
  return {
    type: stat.isDirectory ? QidType.DIR : QidType.FILE,
    version: 0,
    path: BigInt(stat.ino ?? 0),
  };
}

/** The exported roots. */
export class ExportTable {
  private constructor(readonly roots: ExportRoot[]) {}

  /** Check every path exists and is a regular file or a directory. */
  static async create(paths: string[]): Promise<ExportTable> {
    const roots: ExportRoot[] = [];
    for (const given of paths) {
      const absolute = trimSlashes(resolvePath(given));
      const real = await Deno.realPath(absolute);
      const stat = await Deno.stat(real);
      if (!stat.isFile && !stat.isDirectory) {
        throw new P9Error(Errno.EINVAL, `export ${given}: not a regular file or a directory`);
      }
      roots.push({ given, absolute, real, isDirectory: stat.isDirectory });
    }
    return new ExportTable(roots);
  }

  /**
   * The node an attach name names: an exported path as written, its absolute
   * or real form, or a path below an exported directory (as diod allows, so
   * `host:/dir/img.img` SPECs work). An empty aname means the only export.
   */
  async attach(aname: string): Promise<Node> {
    if (aname === "" && this.roots.length === 1) return await this.resolve(this.roots[0], []);
    const wanted = trimSlashes(aname);
    for (const root of this.roots) {
      for (const form of new Set([trimSlashes(root.given), root.absolute, root.real])) {
        if (wanted === form) return await this.resolve(root, []);
      }
    }
    for (const root of this.roots) {
      if (!root.isDirectory) continue;
      for (const form of new Set([root.absolute, root.real])) {
        const prefix = form === "/" ? "/" : `${form}/`;
        if (wanted.startsWith(prefix)) {
          const names = wanted.slice(prefix.length).split("/").filter((n) => n !== "");
          let walked: string[] = [];
          for (const name of names) walked = step(walked, name, `attach ${aname}`);
          return await this.resolve(root, walked);
        }
      }
    }
    throw p9error(Errno.EACCES, `attach ${aname}: not exported`);
  }

  /** The node one walk step from `from` reaches. */
  async walk(from: Node, name: string): Promise<Node> {
    if (!from.stat.isDirectory) throw p9error(Errno.ENOTDIR, `walk ${name}`);
    return await this.resolve(from.root, step(from.names, name, `walk ${name}`));
  }

  /** Resolve `names` under `root`, refusing anything that lands outside it. */
  async resolve(root: ExportRoot, names: string[]): Promise<Node> {
    const joined = names.length === 0 ? root.real : `${root.real}/${names.join("/")}`;
    let real: string;
    try {
      real = await Deno.realPath(joined);
    } catch (err) {
      throw p9error(errnoOf(err), `walk ${names.join("/")}`);
    }
    if (real !== root.real && !real.startsWith(root.real === "/" ? "/" : `${root.real}/`)) {
      throw p9error(Errno.EACCES, `walk ${names.join("/")}: outside the export`);
    }
    const stat = await Deno.stat(real).catch((err) => {
      throw p9error(errnoOf(err), `walk ${names.join("/")}`);
    });
    if (!stat.isFile && !stat.isDirectory) throw p9error(Errno.ENOENT, `walk ${names.join("/")}`);
    return { root, names, real, stat, qid: qidOf(stat) };
  }

  /** The entries of a directory node that a walk would accept, sorted by name. */
  async list(dir: Node): Promise<Node[]> {
    const names: string[] = [];
    for await (const entry of Deno.readDir(dir.real)) names.push(entry.name);
    names.sort();
    const nodes: Node[] = [];
    for (const name of names) {
      try {
        nodes.push(await this.walk(dir, name));
      } catch {
        // Not servable (a symlink out, a FIFO, gone): not listed either.
      }
    }
    return nodes;
  }
}

/** Open a node's file for I/O, checking it is still the inode that was checked. */
export async function openNode(node: Node, writable: boolean): Promise<FileHandle> {
  const flags = (writable ? constants.O_RDWR : constants.O_RDONLY) | constants.O_NOFOLLOW;
  let handle: FileHandle;
  try {
    handle = await openFile(node.real, flags);
  } catch (err) {
    throw p9error(errnoOf(err), `open ${node.names.join("/")}`);
  }
  const stat = await handle.stat();
  if (stat.ino !== node.stat.ino || stat.dev !== node.stat.dev || !stat.isFile()) {
    await handle.close();
    throw p9error(Errno.EACCES, `open ${node.names.join("/")}: changed since it was checked`);
  }
  return handle;
}

/** One walk step on a component list; `..` goes up but never above the root. */
function step(names: string[], name: string, operation: string): string[] {
  if (name === "" || name.includes("/") || name.includes("\0")) {
    throw p9error(Errno.EINVAL, `${operation}: "${name}" is not a file name`);
  }
  if (name.length > 255) throw p9error(Errno.ENAMETOOLONG, operation);
  if (name === ".") return names;
  if (name === "..") {
    if (names.length === 0) throw p9error(Errno.EACCES, `${operation}: above the export root`);
    return names.slice(0, -1);
  }
  return [...names, name];
}

function trimSlashes(path: string): string {
  const trimmed = path.replace(/\/+$/, "");
  return trimmed === "" && path.startsWith("/") ? "/" : trimmed;
}
