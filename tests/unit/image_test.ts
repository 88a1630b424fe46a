/**
 * Image against a fake 9P server that serves a Uint8Array as the file, over a
 * Unix socket in a temporary directory: open (attach, walk, getattr, lopen),
 * reads split into parallel msize-sized Treads, short replies continued,
 * premature end of file, exact writes, directories and range checks.
 */

import assert from "node:assert/strict";
import { ErrnoError, P9Error, ProtocolError } from "../../lib/errors.ts";
import { Image, type OpenOptions } from "../../lib/image.ts";
import { MsgType } from "../../lib/p9/wire.ts";
import { parseSpec } from "../../lib/spec.ts";
import { type FileServerOptions, imageFileScript, listenUnix } from "./support/fake_9p_server.ts";
import { randomBytes } from "../../tools/random.ts";

const PAYLOAD = 8192;
const MSIZE = PAYLOAD + 24;

/**
 * Serve `file`, open it, run `body`, then close everything. `path` is the
 * part of the SPEC after the socket (default `/img`).
 */
async function withImage(
  file: Uint8Array,
  serverOptions: FileServerOptions,
  openOptions: OpenOptions,
  body: (image: Image, fake: Awaited<ReturnType<typeof serve>>) => void | Promise<void>,
  path = "/img",
): Promise<void> {
  const fake = await serve(file, serverOptions);
  try {
    const image = await Image.open(parseSpec(`unix:${fake.path}:${path}`), openOptions);
    try {
      await body(image, fake);
    } finally {
      await image.close();
    }
  } finally {
    await fake.close();
  }
}

async function serve(file: Uint8Array, options: FileServerOptions) {
  const script = imageFileScript(file, { msize: MSIZE, ...options });
  const listening = await listenUnix(script);
  return {
    ...listening,
    script,
    get server() {
      assert.equal(listening.servers.length, 1, "one connection");
      return listening.servers[0];
    },
  };
}

Deno.test("opening an image attaches, stats and opens it read-only by default", async () => {
  const file = randomBytes(5000);
  await withImage(file, {}, { uname: "alice", uid: 1234 }, (image, fake) => {
    assert.equal(image.sizeBytes, 5000);
    assert.equal(image.readOnly, true);
    assert.equal(image.session.msize, MSIZE);
    assert.equal(image.chunkBytes, PAYLOAD);
    const server = fake.server;
    const types = server.requests.map((r) => r.msg.type);
    assert.deepEqual(types, [MsgType.Tversion, MsgType.Tattach, MsgType.Tgetattr, MsgType.Tlopen]);
    const attach = server.requestsOf(MsgType.Tattach)[0].msg;
    assert.equal(attach.uname, "alice");
    assert.equal(attach.nUname, 1234);
    assert.equal(attach.aname, "/img");
    assert.equal(attach.afid, 0xffffffff);
    const lopen = server.requestsOf(MsgType.Tlopen)[0].msg;
    assert.equal(lopen.flags, 0, "O_RDONLY");
    assert.equal(lopen.fid, attach.fid, "the attach fid is the file");
  });
});

Deno.test("closing an image clunks its fid", async () => {
  const fake = await serve(randomBytes(100), {});
  try {
    const image = await Image.open(parseSpec(`unix:${fake.path}:/img`));
    await image.close();
    await fake.server.done;
    assert.deepEqual(fake.script.clunked, [image.fid]);
    assert.equal(image.session.closed, true);
  } finally {
    await fake.close();
  }
});

Deno.test("a SPEC with // walks from the export to the file and clunks the export's fid", async () => {
  const file = randomBytes(3000);
  await withImage(file, { walkable: ["dir", "img"] }, {}, async (image, fake) => {
    const server = fake.server;
    const attach = server.requestsOf(MsgType.Tattach)[0].msg;
    assert.equal(attach.aname, "/export");
    const walk = server.requestsOf(MsgType.Twalk)[0].msg;
    assert.deepEqual(walk.names, ["dir", "img"]);
    assert.equal(walk.fid, attach.fid);
    assert.equal(image.fid, walk.newfid);
    assert.deepEqual(fake.script.clunked, [attach.fid]);
    const dest = new Uint8Array(3000);
    await image.read(0, dest);
    assert.deepEqual(dest, file);
  }, "/export//dir/img");
});

Deno.test("a SPEC that walks to a missing file fails with ENOENT", async () => {
  const fake = await serve(randomBytes(10), { walkable: ["dir"] });
  try {
    await assert.rejects(
      Image.open(parseSpec(`unix:${fake.path}:/export//dir/missing`)),
      (err: unknown) => {
        assert.ok(err instanceof ErrnoError && !(err instanceof P9Error), `got ${err}`);
        assert.equal(err.code, "ENOENT");
        return true;
      },
    );
  } finally {
    await fake.close();
  }
});

Deno.test("a large read is split into msize-sized Treads that are all sent before any reply", async () => {
  const file = randomBytes(8 * PAYLOAD + 100);
  await withImage(file, { readBarrier: 8 }, {}, async (image, fake) => {
    const dest = new Uint8Array(8 * PAYLOAD);
    await image.read(50, dest);
    assert.deepEqual(dest, file.subarray(50, 50 + dest.length));
    const reads = fake.server.requestsOf(MsgType.Tread).map((r) => r.msg);
    assert.equal(reads.length, 8);
    for (const read of reads) assert.ok(read.count <= PAYLOAD, `Tread of ${read.count}`);
    assert.deepEqual(
      reads.map((r) => [Number(r.offset), r.count]).sort((a, b) => a[0] - b[0]),
      Array.from({ length: 8 }, (_, i) => [50 + i * PAYLOAD, PAYLOAD]),
    );
    // Version, attach, getattr and lopen were answered one by one; the reads were not.
    assert.ok(fake.server.maxOutstanding >= 8, `at most ${fake.server.maxOutstanding} at once`);
  });
});

Deno.test("reads use the server's iounit when it is smaller than msize", async () => {
  const file = randomBytes(10_000);
  await withImage(file, { iounit: 1000 }, {}, async (image, fake) => {
    assert.equal(image.chunkBytes, 1000);
    const dest = new Uint8Array(4500);
    await image.read(1, dest);
    assert.deepEqual(dest, file.subarray(1, 4501));
    const counts = fake.server.requestsOf(MsgType.Tread).map((r) => r.msg.count);
    assert.deepEqual(counts, [1000, 1000, 1000, 1000, 500]);
  });
});

Deno.test("short Rread replies are continued until the range is filled", async () => {
  const file = randomBytes(3 * PAYLOAD);
  await withImage(file, { maxReadReplyBytes: 1000 }, {}, async (image, fake) => {
    const dest = new Uint8Array(2 * PAYLOAD + 7);
    await image.read(3, dest);
    assert.deepEqual(dest, file.subarray(3, 3 + dest.length));
    const reads = fake.server.requestsOf(MsgType.Tread).map((r) => r.msg);
    const asked = reads.reduce((sum, r) => sum + Math.min(r.count, 1000), 0);
    assert.equal(asked, dest.length, "every byte asked for exactly once");
    assert.ok(reads.length >= Math.ceil(dest.length / 1000));
  });
});

Deno.test("a zero-byte Rread before the end of the image is an error, not data", async () => {
  const file = randomBytes(4 * PAYLOAD);
  await withImage(file, { zeroReadFrom: 2 * PAYLOAD + 10 }, {}, async (image) => {
    const dest = new Uint8Array(3 * PAYLOAD);
    await assert.rejects(image.read(0, dest), (err: unknown) => {
      assert.ok(err instanceof ProtocolError, `got ${err}`);
      assert.match(err.message, /no data/);
      assert.match(err.message, /^server unix:/);
      return true;
    });
  });
});

Deno.test("writes at odd offsets and lengths land exactly and nowhere else", async () => {
  const size = 5 * PAYLOAD + 3;
  const file = randomBytes(size, 7);
  const expected = file.slice();
  await withImage(file, {}, { writable: true }, async (image, fake) => {
    assert.equal(image.readOnly, false);
    assert.equal(fake.server.requestsOf(MsgType.Tlopen)[0].msg.flags, 2, "O_RDWR");
    for (const [offset, length] of [[1, 1], [4097, 20_001], [size - 3, 3], [PAYLOAD - 1, 2]]) {
      const data = randomBytes(length, offset + 99);
      await image.write(offset, data);
      expected.set(data, offset);
      assert.deepEqual(file, expected, `write of ${length} at ${offset}`);
    }
    for (const write of fake.server.requestsOf(MsgType.Twrite)) {
      assert.ok(write.msg.data.length <= PAYLOAD);
    }
    const back = new Uint8Array(size);
    await image.read(0, back);
    assert.deepEqual(back, expected);
  });
});

Deno.test("short Rwrite replies are continued with the rest of the data", async () => {
  const file = new Uint8Array(3 * PAYLOAD);
  await withImage(file, { maxWriteReplyBytes: 777 }, { writable: true }, async (image, fake) => {
    const data = randomBytes(PAYLOAD + 5);
    await image.write(11, data);
    assert.deepEqual(file.subarray(11, 11 + data.length), data);
    assert.equal(file[10], 0);
    assert.equal(file[11 + data.length], 0);
    assert.ok(fake.server.requestsOf(MsgType.Twrite).length > 2);
  });
});

Deno.test("flush sends Tfsync for the image's fid", async () => {
  await withImage(new Uint8Array(10), {}, { writable: true }, async (image, fake) => {
    await image.flush();
    const fsyncs = fake.server.requestsOf(MsgType.Tfsync).map((r) => r.msg);
    assert.deepEqual(fsyncs, [{ type: MsgType.Tfsync, fid: image.fid, datasync: 0 }]);
  });
});

Deno.test("writing to a read-only image fails with EROFS and sends nothing", async () => {
  await withImage(new Uint8Array(100), {}, {}, async (image, fake) => {
    await assert.rejects(image.write(0, new Uint8Array(1)), (err: unknown) => {
      assert.ok(err instanceof ErrnoError && !(err instanceof P9Error), `got ${err}`);
      assert.equal(err.code, "EROFS");
      return true;
    });
    assert.equal(fake.server.requestsOf(MsgType.Twrite).length, 0);
  });
});

Deno.test("opening a directory fails with EISDIR and ends the session", async () => {
  const fake = await serve(new Uint8Array(0), { mode: 0o040755 });
  try {
    await assert.rejects(Image.open(parseSpec(`unix:${fake.path}:/srv`)), (err: unknown) => {
      assert.ok(err instanceof ErrnoError && !(err instanceof P9Error), `got ${err}`);
      assert.equal(err.code, "EISDIR");
      return true;
    });
    await fake.server.done;
    assert.equal(fake.server.requestsOf(MsgType.Tlopen).length, 0);
  } finally {
    await fake.close();
  }
});

Deno.test("a server refusing the attach fails the open with its errno", async () => {
  const files = imageFileScript(new Uint8Array(1), { msize: MSIZE });
  const fake = await listenUnix((request, server) => {
    if (request.msg.type === MsgType.Tattach) {
      return void server.reply(request.tag, { type: MsgType.Rlerror, ecode: 13 });
    }
    return files(request, server);
  });
  try {
    await assert.rejects(Image.open(parseSpec(`unix:${fake.path}:/img`)), (err: unknown) => {
      assert.ok(err instanceof P9Error);
      assert.equal(err.code, "EACCES");
      assert.match(err.message, /attach \/img/);
      return true;
    });
  } finally {
    await fake.close();
  }
});

Deno.test("reads and writes outside the image are RangeErrors and send nothing", async () => {
  await withImage(new Uint8Array(1000), {}, { writable: true }, async (image, fake) => {
    const before = fake.server.requests.length;
    await assert.rejects(image.read(1000, new Uint8Array(1)), RangeError);
    await assert.rejects(image.read(999, new Uint8Array(2)), RangeError);
    await assert.rejects(image.read(-1, new Uint8Array(1)), RangeError);
    await assert.rejects(image.read(0.5, new Uint8Array(1)), RangeError);
    await assert.rejects(image.write(990, new Uint8Array(11)), RangeError);
    assert.equal(fake.server.requests.length, before);
    // The last byte and an empty read at the end are fine.
    await image.read(999, new Uint8Array(1));
    await image.read(1000, new Uint8Array(0));
  });
});
