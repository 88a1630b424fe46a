/**
 * What each 9P2000.L request means to the export server: one function per
 * message, from a decoded request to the reply frame. Framing, concurrency,
 * flush and backpressure live in connection.ts; path safety in exports.ts.
 *
 * @module
 */

import { statfs } from "node:fs/promises";
import { P9Error } from "../errors.ts";
import {
  allocRread,
  DirentType,
  encode,
  encodeDirents,
  finishRread,
  GetattrMask,
  type Message,
  MsgType,
  NOFID,
  QidType,
  RREAD_HEADER_BYTES,
} from "../p9/wire.ts";
import { Errno } from "../errno.ts";
import type { AuthContext, ServerAuth } from "./auth.ts";
import { type ExportTable, openNode } from "./exports.ts";
import { Fid } from "./fids.ts";

/** What a handler may look at: the connection's state. */
export interface HandlerContext extends AuthContext {
  exports: ExportTable;
  /** The negotiated msize. */
  msize: number;
  readOnly: boolean;
  /** MUNGE authentication, when the server requires it. */
  auth?: ServerAuth;
}

/** A request the server handles, decoded. */
export type Request = Message<
  | typeof MsgType.Tattach
  | typeof MsgType.Twalk
  | typeof MsgType.Tgetattr
  | typeof MsgType.Tlopen
  | typeof MsgType.Tread
  | typeof MsgType.Twrite
  | typeof MsgType.Tfsync
  | typeof MsgType.Tclunk
  | typeof MsgType.Tstatfs
  | typeof MsgType.Tauth
  | typeof MsgType.Treaddir
>;

/** The T message types {@link handle} takes (Tversion and Tflush are the connection's). */
export const handledTypes: ReadonlySet<number> = new Set([
  MsgType.Tattach,
  MsgType.Twalk,
  MsgType.Tgetattr,
  MsgType.Tlopen,
  MsgType.Tread,
  MsgType.Twrite,
  MsgType.Tfsync,
  MsgType.Tclunk,
  MsgType.Tstatfs,
  MsgType.Tauth,
  MsgType.Treaddir,
]);

/**
 * Requests that would change the file system: EROFS on a read-only export,
 * EOPNOTSUPP otherwise.
 */
export const mutatingTypes: ReadonlySet<number> = new Set([
  MsgType.Tlcreate,
  MsgType.Tsymlink,
  MsgType.Tmknod,
  MsgType.Trename,
  MsgType.Tsetattr,
  MsgType.Txattrcreate,
  MsgType.Tlink,
  MsgType.Tmkdir,
  MsgType.Trenameat,
  MsgType.Tunlinkat,
  MsgType.Tremove,
]);

/** Linux open(2) bits Tlopen carries that matter here. */
const O_ACCMODE = 3;
const O_TRUNC = 0o1000;

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
/** Linux NAME_MAX: the longest file name, as Rstatfs reports it. */
const NAME_MAX = 255;

/** Handle one request; a {@link P9Error} it throws becomes Rlerror. */
export async function handle(ctx: HandlerContext, tag: number, msg: Request): Promise<Uint8Array> {
  switch (msg.type) {
    case MsgType.Tauth:
      // Without authentication, as diod: "no such auth file", so clients attach with NOFID.
      if (!ctx.auth) throw new P9Error(Errno.ENOENT, "auth: not required");
      ctx.auth.start(ctx, msg);
      return encode(tag, {
        type: MsgType.Rauth,
        aqid: { type: QidType.AUTH, version: 0, path: 0n },
      });
    case MsgType.Tattach: {
      if (!ctx.auth && msg.afid !== NOFID) {
        throw new P9Error(Errno.EINVAL, "attach: no authentication here");
      }
      if (ctx.fids.has(msg.fid)) throw new P9Error(Errno.EEXIST, `attach: fid ${msg.fid} in use`);
      if (ctx.auth) await ctx.auth.admit(ctx, msg);
      const node = await ctx.exports.attach(msg.aname);
      ctx.fids.add(msg.fid, new Fid(node), "attach");
      return encode(tag, { type: MsgType.Rattach, qid: node.qid });
    }
    case MsgType.Twalk: {
      const from = ctx.fids.get(msg.fid, "walk");
      if (msg.newfid !== msg.fid && ctx.fids.has(msg.newfid)) {
        throw new P9Error(Errno.EEXIST, `walk: fid ${msg.newfid} in use`);
      }
      let node = from.node;
      const qids = [];
      for (const name of msg.names) {
        try {
          node = await ctx.exports.walk(node, name);
        } catch (err) {
          // The first step failing is an error; a later one is a short Rwalk, no new fid.
          if (qids.length === 0) throw err;
          break;
        }
        qids.push(node.qid);
      }
      if (qids.length === msg.names.length) {
        ctx.fids.add(msg.newfid, new Fid(node), "walk", msg.newfid === msg.fid);
      }
      return encode(tag, { type: MsgType.Rwalk, qids });
    }
    case MsgType.Tgetattr: {
      const fid = ctx.fids.get(msg.fid, "getattr");
      return await fid.use(async () => {
        const stat = fid.opened?.kind === "file"
          ? await fid.opened.handle.stat({ bigint: true })
          : await Deno.stat(fid.node.real);
        return encode(tag, getattrReply(stat));
      });
    }
    case MsgType.Tlopen: {
      const fid = ctx.fids.get(msg.fid, "open");
      if (fid.opened || fid.opening) throw new P9Error(Errno.EINVAL, "open: fid already open");
      const writes = (msg.flags & O_ACCMODE) !== 0 || (msg.flags & O_TRUNC) !== 0;
      const node = fid.node;
      if (node.stat.isDirectory) {
        if (writes) throw new P9Error(Errno.EISDIR, "open: a directory");
      } else if (writes && ctx.readOnly) {
        throw new P9Error(Errno.EROFS, "open: the export is read-only");
      } else if (msg.flags & O_TRUNC) {
        // Images have a fixed size; truncating one is never what a block client wants.
        throw new P9Error(Errno.EPERM, "open: O_TRUNC on an image");
      }
      fid.opening = true;
      return await fid.use(async () => {
        try {
          fid.opened = node.stat.isDirectory
            ? { kind: "dir", entries: await ctx.exports.list(node) }
            : { kind: "file", handle: await openNode(node, writes), writable: writes };
        } finally {
          fid.opening = false;
        }
        return encode(tag, { type: MsgType.Rlopen, qid: node.qid, iounit: 0 });
      });
    }
    case MsgType.Tread: {
      const fid = ctx.fids.get(msg.fid, "read");
      return await fid.use(async () => {
        const opened = fid.opened;
        if (opened?.kind !== "file") {
          throw new P9Error(opened ? Errno.EISDIR : Errno.EBADF, "read: fid not open for reading");
        }
        const count = Math.min(msg.count, ctx.msize - RREAD_HEADER_BYTES);
        const frame = allocRread(tag, count);
        const position = safePosition(msg.offset, "read");
        const { bytesRead } = await opened.handle.read(frame, RREAD_HEADER_BYTES, count, position);
        return finishRread(frame, bytesRead);
      });
    }
    case MsgType.Twrite: {
      // A credential written into an authentication fid; a read-only export takes it too.
      const authFid = ctx.fids.getAuth(msg.fid);
      if (authFid) {
        return encode(tag, { type: MsgType.Rwrite, count: authFid.write(msg.offset, msg.data) });
      }
      if (ctx.readOnly) throw new P9Error(Errno.EROFS, "write: the export is read-only");
      const fid = ctx.fids.get(msg.fid, "write");
      return await fid.use(async () => {
        const opened = fid.opened;
        if (opened?.kind !== "file" || !opened.writable) {
          throw new P9Error(Errno.EBADF, "write: fid not open for writing");
        }
        const position = safePosition(msg.offset + BigInt(msg.data.length), "write") -
          msg.data.length;
        let done = 0;
        while (done < msg.data.length) {
          const { bytesWritten } = await opened.handle.write(
            msg.data,
            done,
            msg.data.length - done,
            position + done,
          );
          if (bytesWritten === 0) break;
          done += bytesWritten;
        }
        return encode(tag, { type: MsgType.Rwrite, count: done });
      });
    }
    case MsgType.Tfsync: {
      const fid = ctx.fids.get(msg.fid, "fsync");
      return await fid.use(async () => {
        const opened = fid.opened;
        if (opened?.kind === "file" && opened.writable) {
          await (msg.datasync ? opened.handle.datasync() : opened.handle.sync());
        }
        return encode(tag, { type: MsgType.Rfsync });
      });
    }
    case MsgType.Tclunk:
      ctx.fids.clunk(msg.fid, "clunk");
      return encode(tag, { type: MsgType.Rclunk });
    case MsgType.Tstatfs: {
      const fid = ctx.fids.get(msg.fid, "statfs");
      const fs = await statfs(fid.node.real, { bigint: true });
      return encode(tag, {
        type: MsgType.Rstatfs,
        fsType: Number(fs.type & 0xffffffffn),
        bsize: Number(fs.bsize),
        blocks: fs.blocks,
        bfree: fs.bfree,
        bavail: fs.bavail,
        files: fs.files,
        ffree: fs.ffree,
        fsid: 0n,
        namelen: NAME_MAX,
      });
    }
    case MsgType.Treaddir: {
      const fid = ctx.fids.get(msg.fid, "readdir");
      const opened = fid.opened;
      if (opened?.kind !== "dir") {
        throw new P9Error(
          opened ? Errno.ENOTDIR : Errno.EBADF,
          "readdir: fid not an open directory",
        );
      }
      const start = msg.offset > BigInt(opened.entries.length) ? opened.entries.length : Number(
        msg.offset,
      );
      const entries = opened.entries.slice(start).map((node, i) => ({
        qid: node.qid,
        offset: BigInt(start + i + 1),
        type: node.stat.isDirectory ? DirentType.DIR : DirentType.REG,
        name: node.names[node.names.length - 1],
      }));
      // An Rreaddir's header is an Rread's: the data may fill the rest of msize.
      const room = Math.min(msg.count, ctx.msize - RREAD_HEADER_BYTES);
      return encode(tag, { type: MsgType.Rreaddir, data: encodeDirents(entries, room).data });
    }
  }
}

/** A 64-bit file offset as a number, refusing what a JavaScript number cannot hold exactly. */
function safePosition(offset: bigint, operation: string): number {
  if (offset > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new P9Error(Errno.EINVAL, `${operation}: offset ${offset} too large`);
  }
  return Number(offset);
}

type AnyStat = Deno.FileInfo | import("node:fs").BigIntStats;

/** An Rgetattr from either kind of stat. */
function getattrReply(stat: AnyStat): Message<typeof MsgType.Rgetattr> {
  const big = (v: number | bigint | null | undefined) => BigInt(v ?? 0);
  const time = (ns: bigint) => [ns / 1_000_000_000n, ns % 1_000_000_000n] as const;
  let mode: number;
  let isDirectory: boolean;
  let ns: { a: bigint; m: bigint; c: bigint; b: bigint };
  if ("isDirectory" in stat && typeof stat.isDirectory === "boolean") {
    const s = stat as Deno.FileInfo;
    isDirectory = s.isDirectory;
    mode = ((s.mode ?? 0) & ~S_IFMT) | (isDirectory ? S_IFDIR : S_IFREG);
    const ms = (d: Date | null) => BigInt(d?.getTime() ?? 0) * 1_000_000n;
    ns = { a: ms(s.atime), m: ms(s.mtime), c: ms(s.ctime), b: ms(s.birthtime) };
  } else {
    const s = stat as import("node:fs").BigIntStats;
    isDirectory = s.isDirectory();
    mode = Number(s.mode);
    ns = { a: s.atimeNs, m: s.mtimeNs, c: s.ctimeNs, b: s.birthtimeNs };
  }
  const s = stat as unknown as Record<string, number | bigint | null>;
  const [atimeSec, atimeNsec] = time(ns.a);
  const [mtimeSec, mtimeNsec] = time(ns.m);
  const [ctimeSec, ctimeNsec] = time(ns.c);
  const [btimeSec, btimeNsec] = time(ns.b);
  return {
    type: MsgType.Rgetattr,
    valid: GetattrMask.BASIC,
    qid: { type: isDirectory ? QidType.DIR : QidType.FILE, version: 0, path: big(s.ino) },
    mode,
    uid: Number(s.uid ?? 0),
    gid: Number(s.gid ?? 0),
    nlink: big(s.nlink),
    rdev: big(s.rdev),
    size: big(s.size),
    blksize: big(s.blksize),
    blocks: big(s.blocks),
    atimeSec,
    atimeNsec,
    mtimeSec,
    mtimeNsec,
    ctimeSec,
    ctimeNsec,
    btimeSec,
    btimeNsec,
    gen: 0n,
    dataVersion: 0n,
  };
}
