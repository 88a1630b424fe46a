/**
 * System calls per request: a burst of NBD requests that arrives in one
 * socket read must leave as one write of 9P requests, and the 9P replies
 * that arrive in one read must leave as one write of NBD replies. At a deep
 * queue of small reads this is what the proxy's throughput depends on; a
 * reader that takes a turn of the event loop per request splits the burst.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { BlockBackend } from "../../lib/backend.ts";
import { NbdEngine } from "../../lib/nbd/engine.ts";
import {
  decodeSimpleReply,
  encodeRequest,
  NbdCommand,
  REQUEST_BYTES,
  SIMPLE_REPLY_BYTES,
} from "../../lib/nbd/wire.ts";
import { Session } from "../../lib/p9/session.ts";
import type { ByteStream } from "../../lib/io.ts";
import { encode, type Message, MsgType } from "../../lib/p9/wire.ts";
import { memoryDuplexPair } from "./support/duplex.ts";
import { duplexPair, Fake9pServer, type Request, withVersion } from "./support/fake_9p_server.ts";

const BURST = 32;
const BLOCK = 4096;

/** `stream`, counting its write calls and the bytes of each. */
function counted(stream: ByteStream): ByteStream & { writes: number[] } {
  const writes: number[] = [];
  return {
    writes,
    read: (p) => stream.read(p),
    write: (p) => {
      writes.push(p.length);
      return stream.write(p);
    },
    close: () => stream.close(),
  };
}

/** The byte at `i` of the test image. */
const imageByte = (i: number) => (i * 7 + (i >>> 12)) & 0xff;

Deno.test("a burst of 32 NBD reads costs one 9P write and one NBD write", async () => {
  // The 9P server holds Treads until the whole burst is in, then answers all
  // of them in one write, as a server does when its replies pile up.
  const held: Request[] = [];
  const script = withVersion(65536, (request, server) => {
    if (request.msg.type !== MsgType.Tread) throw new Error(`unexpected ${request.msg.type}`);
    held.push(request);
    if (held.length < BURST) return;
    const frames = held.splice(0).map((r) => {
      const read = r.msg as Message<typeof MsgType.Tread>;
      const data = new Uint8Array(read.count);
      for (let i = 0; i < data.length; i++) data[i] = imageByte(Number(read.offset) + i);
      return encode(r.tag, { type: MsgType.Rread, data });
    });
    const joined = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
    let at = 0;
    for (const frame of frames) {
      joined.set(frame, at);
      at += frame.length;
    }
    return server.sendRaw(joined);
  });
  const pipe = duplexPair();
  const server = new Fake9pServer(pipe.server, script);
  const p9 = counted(pipe.client);
  const session = await Session.start(p9, { timeoutMs: 5000 });
  const versionWrites = p9.writes.length;

  const backend: BlockBackend = {
    sizeBytes: 64 * 1024 * 1024,
    readOnly: true,
    read: async (offset, dest) => {
      assert.equal(await session.read(1, offset, dest), dest.length);
    },
    write: () => Promise.reject(new Error("read-only")),
    flush: () => Promise.resolve(),
  };
  const [engineSide, kernelSide] = memoryDuplexPair();
  const nbd = counted(engineSide);
  const engine = new NbdEngine(nbd, backend);
  const served = engine.serve();

  // The whole burst in one write, as the kernel queues it.
  const burst = new Uint8Array(BURST * REQUEST_BYTES);
  const offsets = Array.from({ length: BURST }, (_, i) => ((i * 37) % 1000) * BLOCK);
  offsets.forEach((offset, i) =>
    encodeRequest({
      type: NbdCommand.read,
      flags: 0,
      cookie: BigInt(i + 1),
      offset: BigInt(offset),
      length: BLOCK,
    }, burst.subarray(i * REQUEST_BYTES))
  );
  await kernelSide.write(burst);

  // Read every reply back and check its bytes.
  const expected = BURST * (SIMPLE_REPLY_BYTES + BLOCK);
  const got = new Uint8Array(expected);
  for (let filled = 0; filled < expected;) {
    const n = await kernelSide.read(got.subarray(filled));
    assert.notEqual(n, null, "engine closed before replying to the burst");
    filled += n!;
  }
  const seen = new Set<bigint>();
  for (let at = 0; at < expected; at += SIMPLE_REPLY_BYTES + BLOCK) {
    const reply = decodeSimpleReply(got.subarray(at));
    assert.equal(reply.error, 0);
    const offset = offsets[Number(reply.cookie) - 1];
    const data = got.subarray(at + SIMPLE_REPLY_BYTES, at + SIMPLE_REPLY_BYTES + BLOCK);
    for (let i = 0; i < BLOCK; i += 509) assert.equal(data[i], imageByte(offset + i));
    seen.add(reply.cookie);
  }
  assert.equal(seen.size, BURST);

  const p9Writes = p9.writes.slice(versionWrites);
  assert.deepEqual(p9Writes.length, 1, `Treads went out in ${p9Writes.length} writes`);
  assert.equal(server.requestsOf(MsgType.Tread).length, BURST);
  assert.deepEqual(nbd.writes, [expected], "the replies went out in more than one write");

  await kernelSide.close();
  await served;
  session.close();
  await server.done;
});
