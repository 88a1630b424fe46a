/**
 * `9nbd export` against our own client (Image, Session) and hand-built
 * frames, in process on free loopback ports: reads and writes at odd
 * offsets, many readers at once, Tflush ordering, escapes out of the export,
 * read-only refusal, hostile clients, --allow and --privport (both sides),
 * MUNGE authentication (with a fake munged) and the start-up warning.
 */

import assert from "node:assert/strict";
import * as net from "node:net";
import {
  AuthError,
  ConnectionError,
  ErrnoError,
  ExitCode,
  exitCodeFor,
  P9Error,
} from "../../lib/errors.ts";
import { Errno } from "../../lib/errno.ts";
import { Image } from "../../lib/image.ts";
import type { ByteStream } from "../../lib/io.ts";
import { Session } from "../../lib/p9/session.ts";
import { FrameReader, writeAll } from "../../lib/p9/transport.ts";
import {
  decode,
  decodeDirents,
  encode,
  type Frame,
  type Message,
  MsgType,
  msgTypeName,
  NOFID,
  NONUNAME,
  NOTAG,
  RREAD_HEADER_BYTES,
} from "../../lib/p9/wire.ts";
import { cidrContains, parseCidr } from "../../lib/server/access.ts";
import { MAX_CREDENTIAL_BYTES } from "../../lib/server/auth.ts";
import { Connection } from "../../lib/server/connection.ts";
import {
  type ExportServer,
  type ExportServerOptions,
  exposureWarning,
  parseListenAddress,
  startExportServer,
} from "../../lib/server/export.ts";
import { ExportTable } from "../../lib/server/exports.ts";
import { parseSpec } from "../../lib/spec.ts";
import { randomBytes } from "../../tools/random.ts";
import { memoryDuplexPair } from "./support/duplex.ts";
import { FakeMunge } from "./support/fake_munge.ts";
import { waitFor } from "../support/wait.ts";

const IMAGE_BYTES = 8 * 1024 * 1024 + 4321;

interface Fixture {
  dir: string;
  image: Uint8Array;
  server: ExportServer;
  port: number;
  spec(name?: string): string;
}

/** A temp dir with `disk.img`, served with `options`; removed afterwards. */
async function withServer(
  options: Partial<ExportServerOptions>,
  body: (f: Fixture) => Promise<void>,
): Promise<void> {
  const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "9nbd-export-test-" }));
  const image = randomBytes(IMAGE_BYTES, 5);
  await Deno.writeFile(`${dir}/disk.img`, image);
  const server = await startExportServer({
    paths: [dir],
    listen: { kind: "tcp", host: "127.0.0.1", port: 0 },
    ...options,
  });
  const port = server.address.kind === "tcp" ? server.address.port : 0;
  try {
    await body({
      dir,
      image,
      server,
      port,
      spec: (name = "disk.img") => `127.0.0.1:${port}:${dir}/${name}`,
    });
  } finally {
    await server.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** A client speaking raw frames, for what our Session would never send. */
class RawClient {
  readonly reader: FrameReader;
  private constructor(readonly conn: Deno.Conn) {
    this.reader = new FrameReader(conn, 16 * 1024 * 1024);
  }
  static async connect(port: number): Promise<RawClient> {
    return new RawClient(await Deno.connect({ hostname: "127.0.0.1", port }));
  }
  send(frame: Uint8Array): Promise<void> {
    return writeAll(this.conn, frame);
  }
  /** The next reply as raw bytes (copied), or null when the server closed. */
  async nextRaw(): Promise<Uint8Array | null> {
    try {
      return (await this.reader.next())?.slice() ?? null;
    } catch {
      return null;
    }
  }
  async next(): Promise<Frame | null> {
    const raw = await this.nextRaw();
    return raw === null ? null : decode(raw);
  }
  /** Tversion + Tattach(fid 1, aname). */
  async start(aname: string, msize = 1 << 20): Promise<void> {
    await this.send(encode(NOTAG, { type: MsgType.Tversion, msize, version: "9P2000.L" }));
    assert.equal((await this.next())?.msg.type, MsgType.Rversion);
    await this.send(
      encode(1, { type: MsgType.Tattach, fid: 1, afid: NOFID, uname: "root", aname, nUname: 0 }),
    );
    const reply = await this.next();
    assert.equal(reply?.msg.type, MsgType.Rattach, `attach ${aname}: ${reply?.msg.type}`);
  }
  close(): void {
    try {
      this.conn.close();
    } catch {
      // Closed by the server.
    }
  }
}

async function session(port: number): Promise<Session> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  return await Session.start(conn, { label: `127.0.0.1:${port}` });
}

async function rejectsWithErrno(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof P9Error, `expected P9Error ${code}, got ${err}`);
    assert.equal(err.code, code, String(err));
    return true;
  });
}

const testOptions = { sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name: "an exported image opens, reads whole and at odd offsets, and reports its size",
  ...testOptions,
  fn: () =>
    withServer({}, async ({ image, spec, dir, port }) => {
      for (const path of [spec(), `127.0.0.1:${port}:${dir}//disk.img`]) {
        const opened = await Image.open(parseSpec(path));
        try {
          assert.equal(opened.sizeBytes, IMAGE_BYTES);
          const all = new Uint8Array(IMAGE_BYTES);
          await opened.read(0, all);
          assert.deepEqual(all, image);
          for (
            const [offset, length] of [[1, 1], [4095, 3], [123457, 1048577], [IMAGE_BYTES - 7, 7]]
          ) {
            const part = new Uint8Array(length);
            await opened.read(offset, part);
            assert.deepEqual(part, image.subarray(offset, offset + length), `at ${offset}`);
          }
        } finally {
          await opened.close();
        }
      }
    }),
});

Deno.test({
  name: "with --rw, writes at odd offsets reach the file and read back",
  ...testOptions,
  fn: () =>
    withServer({ readWrite: true }, async ({ spec, dir, image }) => {
      const opened = await Image.open(parseSpec(spec()), { writable: true });
      try {
        const data = randomBytes(2 * 1024 * 1024 + 3, 9);
        await opened.write(777_777, data);
        await opened.flush?.();
        const back = new Uint8Array(data.length);
        await opened.read(777_777, back);
        assert.deepEqual(back, data);
        const onDisk = await Deno.readFile(`${dir}/disk.img`);
        assert.deepEqual(onDisk.subarray(777_777, 777_777 + data.length), data);
        assert.deepEqual(onDisk.subarray(0, 777_777), image.subarray(0, 777_777));
        assert.equal(onDisk.length, IMAGE_BYTES);
      } finally {
        await opened.close();
      }
    }),
});

Deno.test({
  name: "32 concurrent readers on their own connections all get the right bytes",
  ...testOptions,
  fn: () =>
    withServer({}, async ({ spec, image, server }) => {
      const readers = await Promise.all(
        Array.from({ length: 32 }, () => Image.open(parseSpec(spec()), { msize: 65536 + 24 })),
      );
      try {
        assert.equal(server.connections, 32);
        await Promise.all(readers.map(async (reader, i) => {
          const offset = (i * 250_001) % (IMAGE_BYTES - 300_000);
          const part = new Uint8Array(300_000);
          await reader.read(offset, part);
          assert.deepEqual(part, image.subarray(offset, offset + part.length), `reader ${i}`);
        }));
      } finally {
        await Promise.all(readers.map((r) => r.close()));
      }
    }),
});

Deno.test({
  name: "Tflush: every Rflush comes after its request's reply or instead of it",
  ...testOptions,
  fn: () =>
    withServer({}, async ({ port }) => {
      const client = await RawClient.connect(port);
      try {
        await client.start("");
        await client.send(
          encode(2, { type: MsgType.Twalk, fid: 1, newfid: 2, names: ["disk.img"] }),
        );
        assert.equal((await client.next())?.msg.type, MsgType.Rwalk);
        await client.send(encode(3, { type: MsgType.Tlopen, fid: 2, flags: 0 }));
        assert.equal((await client.next())?.msg.type, MsgType.Rlopen);
        const count = 20;
        const frames: Uint8Array[] = [];
        for (let tag = 10; tag < 10 + count; tag++) {
          frames.push(encode(tag, {
            type: MsgType.Tread,
            fid: 2,
            offset: BigInt(tag * 100_000),
            count: 1 << 20,
          }));
          frames.push(encode(tag + 100, { type: MsgType.Tflush, oldtag: tag }));
        }
        // An Rflush for a tag no request uses comes at once.
        frames.push(encode(500, { type: MsgType.Tflush, oldtag: 9999 }));
        await client.send(new Uint8Array(frames.flatMap((f) => [...f])));
        const seen: string[] = [];
        while (seen.filter((s) => s.startsWith("flush")).length < count + 1) {
          const reply = await client.next();
          assert.ok(reply, "connection closed");
          if (reply.msg.type === MsgType.Rflush) seen.push(`flush ${reply.tag}`);
          else if (reply.msg.type === MsgType.Rread) seen.push(`read ${reply.tag}`);
          else assert.fail(`unexpected ${JSON.stringify(reply.msg)}`);
        }
        for (let tag = 10; tag < 10 + count; tag++) {
          const read = seen.indexOf(`read ${tag}`);
          const flush = seen.indexOf(`flush ${tag + 100}`);
          assert.ok(flush >= 0, `Rflush for ${tag}`);
          assert.ok(read < flush, `Rread ${tag} after its Rflush: ${seen.join(", ")}`);
        }
        // The connection still works afterwards.
        await client.send(encode(7, { type: MsgType.Tclunk, fid: 2 }));
        assert.equal((await client.next())?.msg.type, MsgType.Rclunk);
      } finally {
        client.close();
      }
    }),
});

Deno.test({
  name: "no walk or attach escapes the export: .., symlinks out, absolute names, slashes",
  ...testOptions,
  fn: async () => {
    const outside = await Deno.realPath(await Deno.makeTempDir({ prefix: "9nbd-outside-" }));
    await Deno.writeTextFile(`${outside}/secret.img`, "secret");
    try {
      await withServer({}, async ({ dir, port }) => {
        await Deno.symlink(`${outside}/secret.img`, `${dir}/link-out.img`);
        await Deno.symlink(outside, `${dir}/dir-out`);
        await Deno.symlink(`${dir}/disk.img`, `${dir}/link-in.img`);
        const s = await session(port);
        try {
          const root = await s.attach("root", dir, 0);
          await rejectsWithErrno(s.walk(root.fid, [".."]), "EACCES");
          await rejectsWithErrno(s.walk(root.fid, ["link-out.img"]), "EACCES");
          await rejectsWithErrno(s.walk(root.fid, ["dir-out", "secret.img"]), "EACCES");
          await rejectsWithErrno(s.walk(root.fid, [`${outside}/secret.img`]), "EINVAL");
          await rejectsWithErrno(s.walk(root.fid, ["a/b"]), "EINVAL");
          // A walk that stops after its first step is a short Rwalk, which Session reports as
          // ENOENT of its own (not an Rlerror); from the file itself, ".." is ENOTDIR.
          await assert.rejects(s.walk(root.fid, ["disk.img", "..", "..", "x"]), (err: unknown) => {
            assert.ok(err instanceof ErrnoError && !(err instanceof P9Error), `got ${err}`);
            assert.equal(err.code, "ENOENT", String(err));
            return true;
          });
          const file = await s.walk(root.fid, ["disk.img"]);
          await rejectsWithErrno(s.walk(file.fid, [".."]), "ENOTDIR");
          await rejectsWithErrno(s.attach("root", outside, 0), "EACCES");
          await rejectsWithErrno(s.attach("root", `${dir}/..`, 0), "EACCES");
          await rejectsWithErrno(s.attach("root", `${dir}/link-out.img`, 0), "EACCES");
          await rejectsWithErrno(s.attach("root", "/etc/passwd", 0), "EACCES");
          // A symlink that stays inside is fine.
          const inside = await s.walk(root.fid, ["link-in.img"]);
          await s.clunk(inside.fid);
        } finally {
          s.close();
        }
      });
    } finally {
      await Deno.remove(outside, { recursive: true });
    }
  },
});

Deno.test({
  name: "a read-only export refuses opening for writing and Twrite with EROFS",
  ...testOptions,
  fn: () =>
    withServer({}, async ({ spec, port, dir, image }) => {
      await rejectsWithErrno(Image.open(parseSpec(spec()), { writable: true }), "EROFS");
      const s = await session(port);
      try {
        const root = await s.attach("root", `${dir}/disk.img`, 0);
        await s.lopen(root.fid, 0);
        await rejectsWithErrno(s.write(root.fid, 0, new Uint8Array(10)), "EROFS");
      } finally {
        s.close();
      }
      assert.deepEqual(
        (await Deno.readFile(`${dir}/disk.img`)).subarray(0, 10),
        image.subarray(0, 10),
      );
    }),
});

Deno.test({
  name: "Treaddir lists a directory; unknown requests get EOPNOTSUPP",
  ...testOptions,
  fn: () =>
    withServer({}, async ({ port, dir }) => {
      await Deno.writeFile(`${dir}/b.img`, new Uint8Array(10));
      await Deno.mkdir(`${dir}/sub`);
      const client = await RawClient.connect(port);
      try {
        await client.start(dir);
        await client.send(encode(2, { type: MsgType.Tlopen, fid: 1, flags: 0o200000 }));
        assert.equal((await client.next())?.msg.type, MsgType.Rlopen);
        const names: string[] = [];
        let offset = 0n;
        for (;;) {
          await client.send(encode(3, { type: MsgType.Treaddir, fid: 1, offset, count: 60 }));
          const raw = await client.nextRaw();
          assert.ok(raw);
          assert.equal(raw[4], MsgType.Rreaddir);
          const entries = decodeDirents((decode(raw).msg as Message<typeof MsgType.Rreaddir>).data);
          if (entries.length === 0) break;
          names.push(...entries.map((e) => e.name));
          offset = entries[entries.length - 1].offset;
        }
        assert.deepEqual(names, ["b.img", "disk.img", "sub"]);
        // Txattrwalk (30): fid newfid name.
        const xattr = new Uint8Array([
          19,
          0,
          0,
          0,
          30,
          4,
          0,
          1,
          0,
          0,
          0,
          5,
          0,
          0,
          0,
          2,
          0,
          104,
          105,
        ]);
        await client.send(xattr);
        const reply = await client.next();
        assert.deepEqual(reply?.msg, { type: MsgType.Rlerror, ecode: 95 });
      } finally {
        client.close();
      }
    }),
});

Deno.test({
  name: "hostile clients (garbage, oversized frames) are dropped while another keeps reading",
  ...testOptions,
  fn: () =>
    withServer({ maxMsize: 65536 + 24 }, async ({ port, spec, image }) => {
      const good = await Image.open(parseSpec(spec()));
      try {
        const garbage = await RawClient.connect(port);
        await garbage.send(new Uint8Array([0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4, 5, 6, 7, 8]));
        assert.equal(await garbage.nextRaw(), null, "garbage client dropped");
        garbage.close();

        const tiny = await RawClient.connect(port);
        await tiny.send(new Uint8Array([3, 0, 0, 0]));
        assert.equal(await tiny.nextRaw(), null, "frame below header size dropped");
        tiny.close();

        const oversized = await RawClient.connect(port);
        await oversized.start("", 8192);
        const big = encode(5, {
          type: MsgType.Twrite,
          fid: 1,
          offset: 0n,
          data: new Uint8Array(9000),
        });
        await oversized.send(big).catch(() => {});
        assert.equal(await oversized.nextRaw(), null, "frame over msize dropped");
        oversized.close();

        const malformed = await RawClient.connect(port);
        await malformed.start("");
        // A Tclunk one byte short.
        await malformed.send(new Uint8Array([10, 0, 0, 0, MsgType.Tclunk, 1, 0, 1, 0, 0]));
        assert.equal(await malformed.nextRaw(), null, "truncated body dropped");
        malformed.close();

        const part = new Uint8Array(1 << 20);
        await good.read(4096, part);
        assert.deepEqual(part, image.subarray(4096, 4096 + part.length));
      } finally {
        await good.close();
      }
    }),
});

/**
 * The server's end of a connection to a client that sends the frames a test
 * gives it, one frame per read (so the server's reads count its requests),
 * and that stops reading replies once {@link StallingClient.stall} is called:
 * every later write waits until the connection is closed.
 */
class StallingClient implements ByteStream {
  /** Frames the server has read, whole. */
  framesRead = 0;
  /** Reply frames the server got onto the socket before the stall. */
  readonly replies: Uint8Array[] = [];
  #outgoing: Uint8Array[] = [];
  #received = new Uint8Array(0);
  #stalled = false;
  #closed = false;
  #wakeReader?: () => void;
  readonly #parkedWrites: (() => void)[] = [];

  send(frame: Uint8Array): void {
    this.#outgoing.push(frame);
    this.#wakeReader?.();
  }

  stall(): void {
    this.#stalled = true;
  }

  async read(p: Uint8Array): Promise<number | null> {
    while (this.#outgoing.length === 0 && !this.#closed) {
      await new Promise<void>((resolve) => this.#wakeReader = resolve);
    }
    if (this.#closed) throw new Deno.errors.BadResource("closed");
    const frame = this.#outgoing[0];
    const n = Math.min(p.length, frame.length);
    p.set(frame.subarray(0, n));
    if (n === frame.length) {
      this.#outgoing.shift();
      this.framesRead++;
    } else {
      this.#outgoing[0] = frame.subarray(n);
    }
    return n;
  }

  async write(p: Uint8Array): Promise<number> {
    if (this.#stalled && !this.#closed) {
      await new Promise<void>((resolve) => this.#parkedWrites.push(resolve));
    }
    if (this.#closed) throw new Deno.errors.BadResource("closed");
    const all = new Uint8Array(this.#received.length + p.length);
    all.set(this.#received);
    all.set(p, this.#received.length);
    // Cut what arrived into frames (a write may hold several, or part of one).
    let at = 0;
    while (all.length - at >= 4) {
      const size = new DataView(all.buffer, at, 4).getUint32(0, true);
      if (all.length - at < size) break;
      this.replies.push(all.slice(at, at + size));
      at += size;
    }
    this.#received = all.slice(at);
    return p.length;
  }

  close(): void {
    this.#closed = true;
    this.#wakeReader?.();
    for (const wake of this.#parkedWrites.splice(0)) wake();
  }
}

Deno.test({
  name:
    "a client that never reads its replies costs at most maxInflight replies and is no longer read",
  ...testOptions,
  fn: async () => {
    const dir = await Deno.realPath(await Deno.makeTempDir({ prefix: "9nbd-export-test-" }));
    const image = randomBytes(4 * 1024 * 1024, 8);
    await Deno.writeFile(`${dir}/disk.img`, image);
    const options = {
      exports: await ExportTable.create([dir]),
      readOnly: true,
      maxMsize: (1 << 20) + 24,
      maxInflight: 8,
      maxFids: 64,
    };
    const greedy = new StallingClient();
    const stalled = new Connection(greedy, "greedy client", options);
    const stalledRun = stalled.run();
    const [serverSide, clientSide] = memoryDuplexPair();
    const polite = new Connection(serverSide, "polite client", options);
    const politeRun = polite.run();
    try {
      const setup = [
        encode(NOTAG, { type: MsgType.Tversion, msize: 1 << 20, version: "9P2000.L" }),
        encode(1, {
          type: MsgType.Tattach,
          fid: 1,
          afid: NOFID,
          uname: "root",
          aname: "",
          nUname: 0,
        }),
        encode(2, { type: MsgType.Twalk, fid: 1, newfid: 2, names: ["disk.img"] }),
        encode(3, { type: MsgType.Tlopen, fid: 2, flags: 0 }),
      ];
      for (const [i, frame] of setup.entries()) {
        greedy.send(frame);
        await waitFor(() => greedy.replies.length > i, `the reply to setup frame ${i}`);
      }
      assert.deepEqual(greedy.replies.map((r) => r[4]), [
        MsgType.Rversion,
        MsgType.Rattach,
        MsgType.Rwalk,
        MsgType.Rlopen,
      ]);

      // Far more reads than the window, and the client reads none of the replies.
      greedy.stall();
      const count = 65536;
      for (let tag = 10; tag < 410; tag++) {
        greedy.send(encode(tag, { type: MsgType.Tread, fid: 2, offset: 0n, count }));
      }
      const replyBytes = RREAD_HEADER_BYTES + count;
      await waitFor(
        () => stalled.unsentBytes >= options.maxInflight * replyBytes,
        `${options.maxInflight} replies queued`,
      );
      // Backpressure: every slot holds a reply the client will not take, so
      // the server holds exactly maxInflight of them and reads no further.
      assert.equal(stalled.unsentBytes, options.maxInflight * replyBytes);
      assert.equal(stalled.inflight, options.maxInflight);
      assert.equal(greedy.framesRead, setup.length + options.maxInflight);
      assert.equal(greedy.replies.length, setup.length, "no reply got past the stall");

      // Meanwhile another client is served in full.
      const session = await Session.start(clientSide, { label: "polite client" });
      try {
        const root = await session.attach("root", `${dir}/disk.img`, 0);
        await session.lopen(root.fid, 0);
        const part = new Uint8Array(2 * 1024 * 1024);
        const chunk = 256 * 1024;
        await Promise.all(
          Array.from(
            { length: part.length / chunk },
            (_, i) => session.read(root.fid, i * chunk, part.subarray(i * chunk, (i + 1) * chunk)),
          ),
        );
        assert.deepEqual(part, image.subarray(0, part.length));
      } finally {
        session.close();
      }
      assert.equal(greedy.framesRead, setup.length + options.maxInflight, "still stalled");
    } finally {
      stalled.close();
      polite.close();
      await Promise.all([stalledRun, politeRun]);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a client that never reads its replies stalls only itself",
  ...testOptions,
  fn: () =>
    withServer({ maxInflight: 8 }, async ({ port, spec, image }) => {
      const greedy = await RawClient.connect(port);
      try {
        await greedy.start("");
        await greedy.send(
          encode(2, { type: MsgType.Twalk, fid: 1, newfid: 2, names: ["disk.img"] }),
        );
        await greedy.nextRaw();
        await greedy.send(encode(3, { type: MsgType.Tlopen, fid: 2, flags: 0 }));
        await greedy.nextRaw();
        // Ask for far more than the socket buffers hold, and read nothing. The
        // requests are small: sending them completes whether or not the server reads.
        const frames: Uint8Array[] = [];
        for (let tag = 0; tag < 400; tag++) {
          frames.push(encode(tag, { type: MsgType.Tread, fid: 2, offset: 0n, count: 1 << 20 }));
        }
        await greedy.send(new Uint8Array(frames.flatMap((f) => [...f])));
        const other = await Image.open(parseSpec(spec()));
        try {
          const part = new Uint8Array(2 << 20);
          await other.read(0, part);
          assert.deepEqual(part, image.subarray(0, part.length));
        } finally {
          await other.close();
        }
      } finally {
        greedy.close();
      }
    }),
});

Deno.test({
  name: "--allow refuses 127.0.0.1 when only another range is allowed",
  ...testOptions,
  fn: async () => {
    await withServer({ allow: ["10.0.0.0/8", "fd00::/8"] }, async ({ spec }) => {
      await assert.rejects(
        Image.open(parseSpec(spec()), { timeoutMs: 3000 }),
        (err: unknown) => err instanceof ConnectionError,
      );
    });
    await withServer({ allow: ["10.0.0.0/8", "127.0.0.0/8"] }, async ({ spec }) => {
      const opened = await Image.open(parseSpec(spec()));
      await opened.close();
    });
  },
});

Deno.test({
  name: "--allow matches IPv6 clients on an IPv6 listener",
  ...testOptions,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "9nbd-export-v6-" });
    await Deno.writeFile(`${dir}/a.img`, new Uint8Array(4096).fill(7));
    for (const [allow, works] of [["::1/128", true], ["fe80::/10", false]] as const) {
      let server: ExportServer;
      try {
        server = await startExportServer({
          paths: [`${dir}/a.img`],
          listen: { kind: "tcp", host: "::1", port: 0 },
          allow: [allow],
        });
      } catch (err) {
        console.error(`no IPv6 loopback here: ${err}`);
        break;
      }
      const port = server.address.kind === "tcp" ? server.address.port : 0;
      try {
        const opening = Image.open(parseSpec(`[::1]:${port}:${dir}/a.img`), { timeoutMs: 3000 });
        if (works) await (await opening).close();
        else await assert.rejects(opening, (e: unknown) => e instanceof ConnectionError);
      } finally {
        await server.close();
      }
    }
    await Deno.remove(dir, { recursive: true });
  },
});

/** Connect from `localPort` (0: any) with node:net and try a Tversion; true if answered. */
async function versionFrom(port: number, localPort: number): Promise<boolean> {
  const socket = net.connect({ host: "127.0.0.1", port, localPort: localPort || undefined });
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("error", reject);
    });
    const answered = new Promise<boolean>((resolve) => {
      socket.once("data", () => resolve(true));
      socket.once("close", () => resolve(false));
      socket.once("error", () => resolve(false));
    });
    socket.write(encode(NOTAG, { type: MsgType.Tversion, msize: 8192, version: "9P2000.L" }));
    return await answered;
  } finally {
    socket.destroy();
  }
}

Deno.test({
  name: "--privport refuses an ordinary source port and accepts one below 1024",
  ...testOptions,
  fn: () =>
    withServer({ privilegedPortOnly: true }, async ({ port }) => {
      assert.equal(await versionFrom(port, 0), false);
      if (Deno.uid() !== 0) {
        console.error("not root: cannot bind a port below 1024 to test acceptance");
        return;
      }
      let lastError: unknown;
      for (let attempt = 0; attempt < 10; attempt++) {
        const local = 600 + Math.floor(Math.random() * 400);
        try {
          assert.equal(await versionFrom(port, local), true);
          return;
        } catch (err) {
          lastError = err;
          if ((err as { code?: string }).code !== "EADDRINUSE") throw err;
        }
      }
      throw lastError;
    }),
});

Deno.test({
  name:
    "a client with --privport connects from a port below 1024, which a --privport export admits",
  ...testOptions,
  fn: () =>
    withServer({ privilegedPortOnly: true }, async ({ spec, image }) => {
      const opening = Image.open(parseSpec(spec()), { privilegedPort: true });
      if (Deno.uid() !== 0) {
        // Without root the bind is refused: one line that says so, exit code 3.
        await assert.rejects(opening, (err: unknown) => {
          assert.ok(err instanceof ErrnoError, String(err));
          assert.match(err.message, /--privport: .*needs root/);
          assert.equal(exitCodeFor(err), ExitCode.permission);
          return true;
        });
        return;
      }
      const opened = await opening;
      try {
        const dest = new Uint8Array(300_000);
        await opened.read(4_000_000, dest);
        assert.deepEqual(dest, image.subarray(4_000_000, 4_300_000));
      } finally {
        await opened.close();
      }
      await assert.rejects(
        Image.open(parseSpec(spec()), { timeoutMs: 3000 }),
        (err: unknown) => err instanceof ConnectionError,
        "the same export refuses an ordinary source port",
      );
    }),
});

/** Open `spec` with MUNGE credentials from `client` (auth auto). */
function openAuthenticated(spec: string, client: FakeMunge, mode: "auto" | "none" = "auto") {
  return Image.open(parseSpec(spec), { auth: mode, credentials: client, uid: client.uid });
}

Deno.test({
  name:
    "--auth munge: a client with a good credential reads; another key, none, or a replay is refused",
  ...testOptions,
  fn: async () => {
    const munged = new FakeMunge(0, "key-a");
    await withServer({ munge: munged }, async ({ spec, image }) => {
      const client = new FakeMunge(0, "key-a");
      const opened = await openAuthenticated(spec(), client);
      try {
        const dest = new Uint8Array(100_000);
        await opened.read(123_457, dest);
        assert.deepEqual(dest, image.subarray(123_457, 223_457));
      } finally {
        await opened.close();
      }
      assert.deepEqual(
        munged.decoded,
        client.encoded,
        "the server decoded the client's credential",
      );

      const refusals = [
        [
          "another key",
          () => openAuthenticated(spec(), new FakeMunge(0, "key-b")),
          /refused our MUNGE credential/,
        ],
        [
          "--auth none",
          () => openAuthenticated(spec(), new FakeMunge(0), "none"),
          /requires authentication.*--auth none/,
        ],
      ] as const;
      for (const [what, open, pattern] of refusals) {
        await assert.rejects(open(), (err: unknown) => {
          assert.ok(err instanceof AuthError, `${what}: ${err}`);
          assert.match(err.message, pattern, what);
          return true;
        });
      }

      // A replayed credential: the one the first client already used.
      const replayer = new FakeMunge(0, "key-a");
      replayer.encode = () => Promise.resolve(client.encoded[0]);
      await assert.rejects(openAuthenticated(spec(), replayer), AuthError);
    });
  },
});

/** Send `msg` with tag 1 and return the reply. */
async function ask(raw: RawClient, msg: Message): Promise<Frame | null> {
  await raw.send(encode(1, msg));
  return await raw.next();
}

/** The errno of an Rlerror reply, or the reply's type name when it is not one. */
function answerOf(frame: Frame | null): string {
  if (frame === null) return "closed";
  return frame.msg.type === MsgType.Rlerror
    ? `errno ${frame.msg.ecode}`
    : msgTypeName(frame.msg.type);
}

const EPERM = `errno ${Errno.EPERM}`;

Deno.test({
  name:
    "--auth munge follows diod: the credential must vouch for the attach's uid, once, and an authenticated connection may attach again as that uid (any, if root)",
  ...testOptions,
  fn: async () => {
    const munged = new FakeMunge(0, "key-a");
    await withServer({ munge: munged }, async ({ dir, port }) => {
      const version: Message = { type: MsgType.Tversion, msize: 65536, version: "9P2000.L" };
      const auth = (afid: number, nUname: number): Message => ({
        type: MsgType.Tauth,
        afid,
        uname: "",
        aname: dir,
        nUname,
      });
      const write = (fid: number, offset: number, text: string): Message => ({
        type: MsgType.Twrite,
        fid,
        offset: BigInt(offset),
        data: new TextEncoder().encode(text),
      });
      const attach = (fid: number, afid: number, nUname: number): Message => ({
        type: MsgType.Tattach,
        fid,
        afid,
        uname: "",
        aname: dir,
        nUname,
      });
      const raw = await RawClient.connect(port);
      try {
        await raw.send(encode(NOTAG, version));
        await raw.next();
        assert.equal(answerOf(await ask(raw, attach(1, NOFID, 1000))), EPERM, "no auth yet");
        assert.equal(answerOf(await ask(raw, auth(9, NONUNAME))), EPERM, "no numeric uid");
        assert.equal(answerOf(await ask(raw, auth(9, 1000))), "Rauth");
        const credential = await new FakeMunge(1000, "key-a").encode();
        assert.equal(answerOf(await ask(raw, write(9, 5, credential))), `errno ${Errno.EINVAL}`);
        assert.equal(answerOf(await ask(raw, write(9, 0, credential.slice(0, 10)))), "Rwrite");
        assert.equal(answerOf(await ask(raw, write(9, 10, credential.slice(10)))), "Rwrite");
        assert.equal(
          answerOf(await ask(raw, { type: MsgType.Tread, fid: 9, offset: 0n, count: 100 })),
          `errno ${Errno.EBADF}`,
          "an authentication fid is not a file",
        );
        assert.equal(answerOf(await ask(raw, attach(1, 9, 0))), EPERM, "afid made for 1000");
        assert.equal(answerOf(await ask(raw, attach(1, 9, 1000))), "Rattach");
        assert.equal(answerOf(await ask(raw, attach(2, 9, 1000))), EPERM, "a replay");
        assert.equal(answerOf(await ask(raw, attach(3, NOFID, 1000))), "Rattach", "same uid");
        assert.equal(answerOf(await ask(raw, attach(4, NOFID, 0))), EPERM, "another uid");
        assert.equal(answerOf(await ask(raw, { type: MsgType.Tclunk, fid: 9 })), "Rclunk");
        await raw.send(encode(NOTAG, version));
        await raw.next();
        assert.equal(answerOf(await ask(raw, attach(1, NOFID, 1000))), EPERM, "Tversion forgets");

        // A credential for root, on an afid made for uid 1000: refused.
        assert.equal(answerOf(await ask(raw, auth(8, 1000))), "Rauth");
        const asRoot = new FakeMunge(0, "key-a");
        await ask(raw, write(8, 0, await asRoot.encode()));
        assert.equal(answerOf(await ask(raw, attach(1, 8, 1000))), EPERM, "vouches for 0");

        // Root authenticated may attach as anyone.
        assert.equal(answerOf(await ask(raw, auth(7, 0))), "Rauth");
        await ask(raw, write(7, 0, await asRoot.encode()));
        assert.equal(answerOf(await ask(raw, attach(2, 7, 0))), "Rattach");
        assert.equal(answerOf(await ask(raw, attach(3, NOFID, 1000))), "Rattach", "after root");

        assert.equal(answerOf(await ask(raw, auth(6, 0))), "Rauth");
        assert.equal(
          answerOf(await ask(raw, write(6, 0, "x".repeat(MAX_CREDENTIAL_BYTES + 1)))),
          `errno ${Errno.EFBIG}`,
        );
        assert.equal(answerOf(await ask(raw, attach(4, 6, 0))), EPERM, "nothing written");
      } finally {
        raw.close();
      }
    });
  },
});

Deno.test({
  name: "without --auth, Tauth answers ENOENT (as diod) and an attach naming an afid is refused",
  ...testOptions,
  fn: () =>
    withServer({}, async ({ dir, port }) => {
      const raw = await RawClient.connect(port);
      try {
        await raw.send(
          encode(NOTAG, { type: MsgType.Tversion, msize: 8192, version: "9P2000.L" }),
        );
        await raw.next();
        const tauth: Message = { type: MsgType.Tauth, afid: 9, uname: "", aname: dir, nUname: 0 };
        assert.equal(answerOf(await ask(raw, tauth)), `errno ${Errno.ENOENT}`);
        assert.equal(
          answerOf(
            await ask(raw, {
              type: MsgType.Tattach,
              fid: 1,
              afid: 9,
              uname: "",
              aname: dir,
              nUname: 0,
            }),
          ),
          `errno ${Errno.EINVAL}`,
        );
      } finally {
        raw.close();
      }
    }),
});

Deno.test("an export anyone may use is warned about: beyond loopback, no authentication, no --allow", () => {
  const guards = { authenticated: false, allowed: false, readOnly: true };
  const everywhere = parseListenAddress(":5640");
  assert.match(
    exposureWarning(everywhere, guards) ?? "",
    /^0\.0\.0\.0:5640 is reachable from other machines, .*anyone who reaches it may read the images$/,
  );
  assert.match(
    exposureWarning(parseListenAddress("[::]:564"), { ...guards, readOnly: false }) ?? "",
    /may read and write the images/,
  );
  for (const safe of ["127.0.0.1", "127.3.4.5:99", "[::1]", "localhost", "unix:/run/9p.sock"]) {
    assert.equal(exposureWarning(parseListenAddress(safe), guards), undefined, safe);
  }
  assert.equal(exposureWarning(everywhere, { ...guards, authenticated: true }), undefined);
  assert.equal(exposureWarning(everywhere, { ...guards, allowed: true }), undefined);
});

Deno.test("CIDR ranges and --listen addresses parse as written", () => {
  assert.ok(cidrContains(parseCidr("127.0.0.0/8"), "127.1.2.3"));
  assert.ok(!cidrContains(parseCidr("127.0.0.0/8"), "128.0.0.1"));
  assert.ok(cidrContains(parseCidr("10.0.0.0/8"), "::ffff:10.9.8.7"));
  assert.ok(cidrContains(parseCidr("fd00::/8"), "fd12:3456::1"));
  assert.ok(!cidrContains(parseCidr("fd00::/8"), "fe80::1"));
  assert.ok(cidrContains(parseCidr("::1"), "::1"));
  assert.ok(!cidrContains(parseCidr("::1"), "127.0.0.1"));
  assert.ok(cidrContains(parseCidr("0.0.0.0/0"), "1.2.3.4"));
  for (const bad of ["10.0.0.0/33", "300.1.1.1", "fd00::/129", "host", "1:2:3:4:5:6:7:8:9"]) {
    assert.throws(() => parseCidr(bad), /--allow/);
  }
  assert.deepEqual(parseListenAddress("0.0.0.0:5640"), {
    kind: "tcp",
    host: "0.0.0.0",
    port: 5640,
  });
  assert.deepEqual(parseListenAddress("[::1]:564"), { kind: "tcp", host: "::1", port: 564 });
  assert.deepEqual(parseListenAddress("unix:/run/x.sock"), { kind: "unix", path: "/run/x.sock" });
  assert.throws(() => parseListenAddress("::1:564"), /brackets/);
  assert.throws(() => parseListenAddress("host:99999"), /port/);
});
