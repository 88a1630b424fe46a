import assert from "node:assert/strict";
import { ConnectionError, P9Error, ProtocolError } from "../../lib/errors.ts";
import { errnoNumber } from "../../lib/errno.ts";
import {
  type ByteStream,
  deviceSizeBytes,
  NbdEngine,
  type NbdEngineOptions,
  transmissionFlags,
} from "../../lib/nbd/engine.ts";
import {
  CommandFlag,
  encodeRequest,
  NbdCommand,
  NbdError,
  type NbdRequest,
  TransmissionFlag,
} from "../../lib/nbd/wire.ts";
import { seededRandom } from "../../tools/random.ts";
import { memoryDuplexPair, unixSocketPair } from "./support/duplex.ts";
import { Gate, MemoryBackend, Parking } from "./support/memory_backend.ts";
import { NbdClient } from "./support/nbd_client.ts";
import { nextTurn, waitFor } from "../support/wait.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** Deterministic, position-dependent bytes, so a misplaced block is noticed. */
function pattern(length: number, seed = 1): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 31 + (i >>> 9) * 7 + seed) & 0xff;
  return bytes;
}

interface Harness {
  engine: NbdEngine;
  /** The peer, as the kernel's driver would be. */
  client: NbdClient;
  /** engine.serve(), with rejections observed so a test may check them later. */
  served: Promise<void>;
  /** "resolved", "rejected" or "pending", as of now. */
  state(): string;
}

async function start(
  backend: MemoryBackend,
  options: NbdEngineOptions = {},
  transport: { kind: "unix" } | { kind: "memory"; maxWriteBytes?: number } = { kind: "unix" },
): Promise<Harness> {
  let server: ByteStream;
  let client: ByteStream;
  if (transport.kind === "unix") {
    [server, client] = await unixSocketPair();
  } else {
    [server, client] = memoryDuplexPair({ maxWriteBytes: transport.maxWriteBytes });
  }
  const engine = new NbdEngine(server, backend, options);
  let state = "pending";
  const served = engine.serve();
  served.then(() => state = "resolved", () => state = "rejected");
  return { engine, client: new NbdClient(client), served, state: () => state };
}

/** Disconnect politely and wait for the engine to finish. */
async function finish(h: Harness): Promise<void> {
  await h.client.disconnect();
  await h.served;
  await h.client.ended;
  h.client.close();
}

Deno.test("reads return the bytes of the image at the offsets asked for", async () => {
  const image = pattern(4 * MiB);
  const h = await start(new MemoryBackend(image.slice()));
  for (const [offset, length] of [[0, 512], [4096, 4096], [3 * MiB, MiB], [4 * MiB - 512, 512]]) {
    const reply = await h.client.read(offset, length);
    assert.equal(reply.error, 0);
    assert.deepEqual(reply.data, image.subarray(offset, offset + length));
  }
  await finish(h);
});

Deno.test("a zero-length read is answered without data", async () => {
  const backend = new MemoryBackend(4096);
  const h = await start(backend);
  const reply = await h.client.read(1024, 0);
  assert.equal(reply.error, 0);
  assert.equal(reply.data?.length, 0);
  await finish(h);
});

Deno.test("writes read back, including one larger than the engine's read buffer", async () => {
  const backend = new MemoryBackend(8 * MiB);
  const h = await start(backend);
  const small = pattern(4096, 9);
  const large = pattern(3 * MiB + 512, 5);
  assert.equal((await h.client.write(8192, small)).error, 0);
  assert.equal((await h.client.write(MiB, large)).error, 0);
  assert.deepEqual((await h.client.read(8192, 4096)).data, small);
  assert.deepEqual((await h.client.read(MiB, large.length)).data, large);
  assert.deepEqual(backend.data.subarray(MiB, MiB + large.length), large);
  await finish(h);
});

Deno.test("replies come out in completion order and each matches its request by cookie", async () => {
  const image = pattern(64 * KiB);
  const gate = new Gate();
  const backend = new MemoryBackend(image.slice(), {
    before: (op) => op.offset === 0 ? gate.opened : undefined,
  });
  const h = await start(backend);
  const slow = h.client.request({ type: NbdCommand.read, offset: 0, length: 4096, cookie: 111n });
  const fast = h.client.request({
    type: NbdCommand.read,
    offset: 8192,
    length: 4096,
    cookie: 0xffffffff_00000222n,
  });
  const fastReply = await fast;
  assert.equal(fastReply.cookie, 0xffffffff_00000222n);
  assert.deepEqual(fastReply.data, image.subarray(8192, 12288));
  gate.open();
  const slowReply = await slow;
  assert.equal(slowReply.cookie, 111n);
  assert.deepEqual(slowReply.data, image.subarray(0, 4096));
  assert.deepEqual(h.client.replyOrder, [0xffffffff_00000222n, 111n]);
  await finish(h);
});

Deno.test("many concurrent requests are served in parallel but never beyond maxInflight", async () => {
  const image = pattern(MiB);
  const parking = new Parking();
  const backend = new MemoryBackend(image.slice(), { before: parking.hook });
  const maxInflight = 4;
  const h = await start(backend, { maxInflight }, { kind: "memory" });
  const count = 60;
  // One burst, read in one socket read: a wider window would admit all of it in one turn.
  const replies = h.client.burst(
    Array.from(
      { length: count },
      (_, i) => ({ type: NbdCommand.read, offset: i * 4096, length: 4096 }),
    ),
  );
  const random = seededRandom(11);
  for (let released = 0; released < count; released++) {
    // Each completion frees one slot, which the next request takes: the window stays full.
    const expected = Math.min(maxInflight, count - released);
    await waitFor(() => parking.waiting.length >= expected, `${expected} backend calls`);
    assert.equal(parking.waiting.length, expected);
    assert.equal(parking.started, released + expected);
    assert.ok(h.engine.inflight <= maxInflight, `${h.engine.inflight} in flight`);
    // Finish them in a seeded random order, so completions overtake each other.
    parking.release(random.below(parking.waiting.length));
  }
  const done = await Promise.all(replies);
  done.forEach((reply, i) => {
    assert.equal(reply.error, 0);
    assert.deepEqual(reply.data, image.subarray(i * 4096, (i + 1) * 4096));
  });
  assert.equal(backend.maxInflight, maxInflight);
  assert.notDeepEqual(h.client.replyOrder, [...h.client.replyOrder].sort());
  await finish(h);
});

Deno.test("a full window stops the engine reading until a slot frees", async () => {
  const parking = new Parking();
  const backend = new MemoryBackend(64 * KiB, { before: parking.hook });
  const h = await start(backend, { maxInflight: 2 }, { kind: "memory" });
  // One burst, read in one socket read: a wider window would admit all four in one turn.
  const replies = h.client.burst(
    [0, 1, 2, 3].map((i) => ({ type: NbdCommand.read, offset: i * 512, length: 512 })),
  );
  await waitFor(() => parking.started >= 2, "two backend calls");
  assert.equal(parking.started, 2);
  assert.equal(backend.inflight, 2);
  assert.equal(h.engine.inflight, 2);
  // A freed slot lets exactly one more request in.
  parking.release();
  await waitFor(() => parking.started >= 3, "a third backend call");
  assert.equal(parking.started, 3);
  assert.equal(h.engine.inflight, 2);
  parking.releaseAll();
  for (const reply of await Promise.all(replies)) assert.equal(reply.error, 0);
  assert.equal(backend.maxInflight, 2);
  await finish(h);
});

Deno.test("data in flight is bounded: bytes wait for bytes, and one large request still runs", async () => {
  const image = pattern(8 * MiB);
  const parking = new Parking();
  const backend = new MemoryBackend(image.slice(), { before: parking.hook });
  const h = await start(backend, { maxInflight: 64, maxInflightBytes: 2 * MiB }, {
    kind: "memory",
  });
  // Eight 1 MiB reads, then a small one, in one burst: only two fit the 2 MiB bound,
  // and the small one waits behind the rest (the bound counts bytes, in order).
  const replies = h.client.burst([
    ...Array.from(
      { length: 8 },
      (_, i) => ({ type: NbdCommand.read, offset: i * MiB, length: MiB }),
    ),
    { type: NbdCommand.read, offset: 0, length: 4 * KiB },
  ]);
  await waitFor(() => parking.started >= 2, "two backend calls");
  assert.equal(parking.started, 2);
  assert.equal(backend.inflight, 2);
  parking.releaseAll();
  const done = await Promise.all(replies);
  done.slice(0, 8).forEach((reply, i) => {
    assert.equal(reply.error, 0);
    assert.deepEqual(reply.data, image.subarray(i * MiB, (i + 1) * MiB));
  });
  assert.deepEqual(done[8].data, image.subarray(0, 4 * KiB));
  assert.equal(backend.maxInflight, 2);
  // A request larger than the bound is served alone rather than never.
  const big = await h.client.read(0, 4 * MiB);
  assert.equal(big.error, 0);
  assert.deepEqual(big.data, image.subarray(0, 4 * MiB));
  await finish(h);
});

Deno.test("replies never interleave even when every stream write is short", async () => {
  const image = pattern(256 * KiB);
  const parking = new Parking();
  const backend = new MemoryBackend(image.slice(), { before: parking.hook });
  const h = await start(backend, {}, { kind: "memory", maxWriteBytes: 7 });
  const count = 40;
  const replies = Array.from(
    { length: count },
    (_, i) =>
      i % 2 === 0
        ? h.client.read(i * 4096, 4096)
        : h.client.write(i * 4096, image.subarray(i * 4096, (i + 1) * 4096)),
  );
  // Every request running at once, then all finishing together in a seeded
  // random order: their replies queue up behind one another's short writes.
  await waitFor(() => parking.waiting.length === count, `${count} backend calls`);
  const random = seededRandom(3);
  while (parking.waiting.length > 0) parking.release(random.below(parking.waiting.length));
  (await Promise.all(replies)).forEach((reply, i) => {
    assert.equal(reply.error, 0);
    if (i % 2 === 0) assert.deepEqual(reply.data, image.subarray(i * 4096, (i + 1) * 4096));
  });
  assert.equal(h.client.violation, undefined);
  assert.notDeepEqual(h.client.replyOrder, [...h.client.replyOrder].sort());
  await finish(h);
});

Deno.test("a FUA write is flushed after it is written and before it is acknowledged", async () => {
  const backend = new MemoryBackend(64 * KiB);
  const h = await start(backend);
  assert.equal((await h.client.write(0, pattern(4096))).error, 0);
  assert.deepEqual(backend.entries("start flush"), []);
  assert.equal((await h.client.write(4096, pattern(4096), CommandFlag.fua)).error, 0);
  assert.deepEqual(backend.log.slice(-4), [
    "start write 4096+4096",
    "end write 4096+4096",
    "start flush",
    "end flush",
  ]);
  await finish(h);
});

Deno.test("a FLUSH waits for the writes in flight when it arrived", async () => {
  const parking = new Parking((op) => op.kind === "write");
  const backend = new MemoryBackend(64 * KiB, { before: parking.hook });
  const h = await start(backend, {}, { kind: "memory" });
  // In one burst, so the FLUSH is admitted in the same turn as the WRITE it must wait for.
  const [write, flush] = h.client.burst([
    { type: NbdCommand.write, offset: 0, data: pattern(8192) },
    { type: NbdCommand.flush },
  ]);
  await waitFor(() => parking.waiting.length === 1, "the write to start");
  await nextTurn();
  assert.equal(h.engine.inflight, 2, "the FLUSH was admitted");
  assert.deepEqual(backend.entries("start flush"), [], "flushed before the write finished");
  parking.releaseAll();
  assert.equal((await flush).error, 0);
  assert.equal((await write).error, 0);
  const log = backend.log;
  assert.ok(log.indexOf("end write 0+8192") < log.indexOf("start flush"), log.join(", "));
  await finish(h);
});

Deno.test("WRITE_ZEROES zeros exactly its range, in chunks from one zero buffer", async () => {
  const size = 8 * MiB;
  const backend = new MemoryBackend(new Uint8Array(size).fill(0xff));
  const h = await start(backend);
  const offset = MiB - 512;
  const length = 3 * MiB + 1024;
  assert.equal((await h.client.writeZeroes(offset, length)).error, 0);
  assert.ok(backend.data.subarray(offset, offset + length).every((b) => b === 0));
  assert.equal(backend.data[offset - 1], 0xff);
  assert.equal(backend.data[offset + length], 0xff);
  assert.equal(backend.entries("start write").length, 4); // 1 MiB chunks
  assert.deepEqual(backend.entries("start flush"), []);
  assert.equal((await h.client.writeZeroes(0, 512, CommandFlag.fua)).error, 0);
  assert.equal(backend.entries("start flush").length, 1);
  await finish(h);
});

Deno.test("requests touching bytes past the end get EINVAL and never reach the backend", async () => {
  const backend = new MemoryBackend(64 * KiB);
  const h = await start(backend);
  const size = 64 * KiB;
  assert.equal((await h.client.read(size - 512, 1024)).error, NbdError.EINVAL);
  assert.equal((await h.client.read(size, 1)).error, NbdError.EINVAL);
  assert.equal(
    (await h.client.request({ type: NbdCommand.read, offset: 0xffffffffffffff00n, length: 512 }))
      .error,
    NbdError.EINVAL,
  );
  // The refused payload is still consumed: the next request is read in step.
  assert.equal((await h.client.write(size - 4096, pattern(8192))).error, NbdError.EINVAL);
  assert.equal((await h.client.writeZeroes(size - 512, 1024)).error, NbdError.EINVAL);
  assert.deepEqual(backend.log, []);
  assert.equal((await h.client.read(size - 512, 512)).error, 0);
  await finish(h);
});

Deno.test("a write on a read-only backend gets EPERM and the connection stays in step", async () => {
  const image = pattern(64 * KiB);
  const backend = new MemoryBackend(image.slice(), { readOnly: true });
  const h = await start(backend);
  assert.equal((await h.client.write(0, pattern(4096, 3))).error, NbdError.EPERM);
  assert.equal((await h.client.write(0, pattern(4096, 3), CommandFlag.fua)).error, NbdError.EPERM);
  assert.equal((await h.client.writeZeroes(0, 4096)).error, NbdError.EPERM);
  assert.equal((await h.client.flush()).error, 0);
  assert.deepEqual((await h.client.read(0, 4096)).data, image.subarray(0, 4096));
  assert.deepEqual(backend.data, image);
  assert.deepEqual(backend.log, ["start read 0+4096", "end read 0+4096"]);
  await finish(h);
});

Deno.test("a backend error becomes an error reply and the engine keeps serving", async () => {
  const failures: unknown[] = [];
  const backend = new MemoryBackend(pattern(64 * KiB), {
    before: (op) => {
      if (op.kind === "write" && op.offset === 0) {
        throw new P9Error(errnoNumber("ENOSPC"), "write /img");
      }
      if (op.kind === "read" && op.offset === 4096) throw new Error("session lost");
      if (op.kind === "read" && op.offset === 8192) {
        throw new P9Error(errnoNumber("ENOENT"), "read /img");
      }
    },
  });
  const h = await start(backend, { onRequestError: (err) => failures.push(err) });
  assert.equal((await h.client.write(0, pattern(512))).error, NbdError.ENOSPC);
  const failedRead = await h.client.read(4096, 512);
  assert.equal(failedRead.error, NbdError.EIO);
  assert.equal(failedRead.data, undefined);
  assert.equal((await h.client.read(8192, 512)).error, NbdError.EIO);
  assert.equal(failures.length, 3);
  const good = await h.client.read(12288, 512);
  assert.equal(good.error, 0);
  assert.deepEqual(good.data, pattern(64 * KiB).subarray(12288, 12800));
  await finish(h);
});

Deno.test("a throwing onRequestError hook does not take the connection down", async () => {
  const backend = new MemoryBackend(4096, {
    before: () => {
      throw new Error("backend down");
    },
  });
  const h = await start(backend, {
    onRequestError: () => {
      throw new Error("logger broke");
    },
  });
  assert.equal((await h.client.read(0, 512)).error, NbdError.EIO);
  assert.equal((await h.client.read(0, 512)).error, NbdError.EIO);
  await finish(h);
});

Deno.test("TRIM, which is not advertised, and unknown commands get EINVAL", async () => {
  const backend = new MemoryBackend(64 * KiB);
  const h = await start(backend);
  assert.equal(
    (await h.client.request({ type: NbdCommand.trim, offset: 0, length: 4096 })).error,
    NbdError.EINVAL,
  );
  assert.equal((await h.client.request({ type: 5, offset: 0, length: 0 })).error, NbdError.EINVAL);
  assert.deepEqual(backend.log, []);
  await finish(h);
});

Deno.test("DISC ends serve() only after the requests in flight have been answered", async () => {
  const parking = new Parking();
  const image = pattern(64 * KiB);
  const backend = new MemoryBackend(image.slice(), { before: parking.hook });
  const h = await start(backend, {}, { kind: "memory" });
  const [reply] = h.client.burst([{ type: NbdCommand.read, offset: 0, length: 4096 }], true);
  reply.catch(() => {}); // a failure is asserted below, not left unhandled
  await waitFor(() => parking.waiting.length === 1, "the read to start");
  // The DISC came in the same socket read; all it could set off has run by the next turn.
  await nextTurn();
  assert.equal(h.state(), "pending");
  parking.releaseAll();
  assert.deepEqual((await reply).data, image.subarray(0, 4096));
  await h.served;
  await h.client.ended; // the engine closed its end
  h.client.close();
});

Deno.test("requests after DISC are not read", async () => {
  const backend = new MemoryBackend(64 * KiB);
  const h = await start(backend);
  const disc = encodeRequest({
    flags: 0,
    type: NbdCommand.disc,
    cookie: 1n,
    offset: 0n,
    length: 0,
  });
  const read = encodeRequest({
    flags: 0,
    type: NbdCommand.read,
    cookie: 2n,
    offset: 0n,
    length: 1,
  });
  const both = new Uint8Array(disc.length + read.length);
  both.set(disc);
  both.set(read, disc.length);
  await h.client.sendRaw(both);
  await h.served;
  assert.deepEqual(backend.log, []);
  h.client.close();
});

Deno.test("EOF between requests ends serve() cleanly", async () => {
  const h = await start(new MemoryBackend(4096), {}, { kind: "memory" });
  assert.equal((await h.client.read(0, 512)).error, 0);
  h.client.close();
  await h.served;
});

Deno.test("EOF in the middle of a request header ends serve() cleanly", async () => {
  const backend = new MemoryBackend(4096);
  const h = await start(backend);
  const header = encodeRequest({
    flags: 0,
    type: NbdCommand.read,
    cookie: 1n,
    offset: 0n,
    length: 512,
  });
  await h.client.sendRaw(header.subarray(0, 11));
  h.client.close();
  await h.served;
  assert.deepEqual(backend.log, []);
});

Deno.test("EOF in the middle of a WRITE payload ends serve() without writing", async () => {
  const backend = new MemoryBackend(64 * KiB);
  const h = await start(backend, {}, { kind: "memory" });
  const header = encodeRequest({
    flags: 0,
    type: NbdCommand.write,
    cookie: 1n,
    offset: 0n,
    length: 4096,
  });
  await h.client.sendRaw(header);
  await h.client.sendRaw(pattern(1000));
  h.client.close();
  await h.served;
  assert.deepEqual(backend.log, []);
});

Deno.test("a garbage magic drops the connection with a ProtocolError", async () => {
  const backend = new MemoryBackend(4096);
  const h = await start(backend);
  assert.equal((await h.client.read(0, 512)).error, 0);
  const garbage = new Uint8Array(28).fill(0x41);
  await h.client.sendRaw(garbage);
  await assert.rejects(h.served, ProtocolError);
  await h.client.ended; // the engine closed the socket
  h.client.close();
});

Deno.test("a READ or WRITE longer than the limit drops the connection with a ProtocolError", async () => {
  for (const type of [NbdCommand.read, NbdCommand.write]) {
    const backend = new MemoryBackend(1 * MiB);
    const h = await start(backend, { maxRequestBytes: 64 * KiB });
    const header = encodeRequest({ flags: 0, type, cookie: 1n, offset: 0n, length: 64 * KiB + 1 });
    await h.client.sendRaw(header);
    await assert.rejects(h.served, (err: unknown) => {
      assert.ok(err instanceof ProtocolError);
      assert.match(err.message, /65537 bytes exceeds/);
      return true;
    });
    await h.client.ended;
    h.client.close();
    assert.deepEqual(backend.log, []);
  }
});

Deno.test("a request exactly at the length limit is served", async () => {
  const backend = new MemoryBackend(1 * MiB);
  const h = await start(backend, { maxRequestBytes: 64 * KiB });
  assert.equal((await h.client.write(0, pattern(64 * KiB))).error, 0);
  assert.equal((await h.client.read(0, 64 * KiB)).error, 0);
  await finish(h);
});

Deno.test("WRITE_ZEROES is not bound by the request length limit (it carries no payload)", async () => {
  const backend = new MemoryBackend(new Uint8Array(2 * MiB).fill(1));
  const h = await start(backend, { maxRequestBytes: 64 * KiB });
  assert.equal((await h.client.writeZeroes(0, 2 * MiB)).error, 0);
  assert.ok(backend.data.every((b) => b === 0));
  await finish(h);
});

Deno.test("stop() ends serve() and closes the stream while a read is pending", async () => {
  const h = await start(new MemoryBackend(4096));
  assert.equal((await h.client.read(0, 512)).error, 0);
  h.engine.stop();
  await h.served;
  await h.client.ended;
  h.client.close();
});

Deno.test("stop() waits for backend calls in flight and drops their replies", async () => {
  const parking = new Parking();
  const backend = new MemoryBackend(4096, { before: parking.hook });
  const h = await start(backend, {}, { kind: "memory" });
  const reply = h.client.read(0, 512);
  reply.catch(() => {});
  await waitFor(() => parking.waiting.length === 1, "the read to start");
  h.engine.stop();
  await nextTurn();
  assert.equal(h.state(), "pending");
  parking.releaseAll();
  await h.served;
  await assert.rejects(reply);
  assert.equal(backend.inflight, 0);
});

Deno.test("a failing socket read rejects serve() with a ConnectionError", async () => {
  const stream: ByteStream = {
    read: () => Promise.reject(new Deno.errors.ConnectionReset("reset by peer")),
    write: (p) => Promise.resolve(p.length),
    close: () => {},
  };
  const engine = new NbdEngine(stream, new MemoryBackend(4096));
  await assert.rejects(engine.serve(), (err: unknown) => {
    assert.ok(err instanceof ConnectionError);
    assert.ok(err.cause instanceof Deno.errors.ConnectionReset);
    return true;
  });
});

Deno.test("a failing reply write rejects serve() with a ConnectionError", async () => {
  const request = encodeRequest({
    flags: 0,
    type: NbdCommand.read,
    cookie: 1n,
    offset: 0n,
    length: 8,
  });
  let sent = false;
  let closed = false;
  let wakeRead: (() => void) | undefined;
  const stream: ByteStream = {
    read: async (p) => {
      if (!sent) {
        sent = true;
        p.set(request);
        return request.length;
      }
      // Then block like a quiet socket until closed.
      await new Promise<void>((resolve) => wakeRead = resolve);
      if (closed) throw new Deno.errors.BadResource("closed");
      return null;
    },
    write: () => Promise.reject(new Deno.errors.BrokenPipe("broken pipe")),
    close: () => {
      closed = true;
      wakeRead?.();
    },
  };
  const engine = new NbdEngine(stream, new MemoryBackend(4096));
  await assert.rejects(engine.serve(), (err: unknown) => {
    assert.ok(err instanceof ConnectionError);
    assert.ok(err.cause instanceof Deno.errors.BrokenPipe);
    return true;
  });
  assert.ok(closed);
});

Deno.test("serve() may be called only once", async () => {
  const [server, client] = memoryDuplexPair();
  const engine = new NbdEngine(server, new MemoryBackend(4096));
  const served = engine.serve();
  await assert.rejects(engine.serve(), /only once/);
  client.close();
  await served;
});

Deno.test("bytes between the image end and a larger export size read as zeros", async () => {
  const image = pattern(1000);
  const backend = new MemoryBackend(image.slice());
  const h = await start(backend, { exportSizeBytes: 1024 });
  // Dirty the pooled buffers first so stale bytes would show.
  await h.client.read(0, 512);
  const tail = await h.client.read(512, 512);
  assert.equal(tail.error, 0);
  assert.deepEqual(tail.data!.subarray(0, 488), image.subarray(512, 1000));
  assert.ok(tail.data!.subarray(488).every((b) => b === 0));
  assert.equal((await h.client.read(1024, 512)).error, NbdError.EINVAL);
  await finish(h);
});

Deno.test("a write past the image end but inside the export is kept only if the tail is zeros", async () => {
  const backend = new MemoryBackend(1000);
  const h = await start(backend, { exportSizeBytes: 1024 });
  const zeroTail = pattern(512);
  zeroTail.fill(0, 488);
  assert.equal((await h.client.write(512, zeroTail)).error, 0);
  assert.deepEqual(backend.data.subarray(512), zeroTail.subarray(0, 488));
  assert.equal((await h.client.write(512, pattern(512, 4))).error, NbdError.ENOSPC);
  assert.deepEqual(backend.data.subarray(512), zeroTail.subarray(0, 488));
  assert.equal((await h.client.writeZeroes(512, 512)).error, 0);
  assert.ok(backend.data.subarray(512).every((b) => b === 0));
  await finish(h);
});

Deno.test("an image never sees a request outside it when the device size is rounded down", async () => {
  const backend = new MemoryBackend(pattern(1000));
  const h = await start(backend, { exportSizeBytes: deviceSizeBytes(1000, 512) });
  assert.equal((await h.client.read(0, 512)).error, 0);
  assert.equal((await h.client.read(512, 512)).error, NbdError.EINVAL);
  await finish(h);
});

Deno.test("deviceSizeBytes rounds the image size down to whole blocks", () => {
  assert.equal(deviceSizeBytes(1000), 512);
  assert.equal(deviceSizeBytes(1024), 1024);
  assert.equal(deviceSizeBytes(511), 0);
  assert.equal(deviceSizeBytes(10_000, 4096), 8192);
  assert.equal(deviceSizeBytes(2 ** 40 + 5), 2 ** 40);
  assert.throws(() => deviceSizeBytes(4096, 1000), RangeError);
  assert.throws(() => deviceSizeBytes(4096, 256), RangeError);
  assert.throws(() => deviceSizeBytes(-1), RangeError);
});

Deno.test("transmission flags advertise read-only, or flush, FUA and write-zeroes", () => {
  assert.equal(
    transmissionFlags({ readOnly: true }),
    TransmissionFlag.hasFlags | TransmissionFlag.readOnly,
  );
  assert.equal(
    transmissionFlags({ readOnly: false }),
    TransmissionFlag.hasFlags | TransmissionFlag.sendFlush | TransmissionFlag.sendFua |
      TransmissionFlag.sendWriteZeroes,
  );
  assert.equal(transmissionFlags({ readOnly: false }) & TransmissionFlag.sendTrim, 0);
  assert.equal(
    transmissionFlags({ readOnly: true }, { canMultiConn: true }),
    TransmissionFlag.hasFlags | TransmissionFlag.readOnly | TransmissionFlag.canMultiConn,
  );
});

Deno.test("maxInflight must be a positive integer", () => {
  const [server] = memoryDuplexPair();
  assert.throws(
    () => new NbdEngine(server, new MemoryBackend(512), { maxInflight: 0 }),
    RangeError,
  );
});

Deno.test("onRequestError is told which request failed", async () => {
  const seen: NbdRequest[] = [];
  const backend = new MemoryBackend(4096, {
    before: () => {
      throw new Error("down");
    },
  });
  const h = await start(backend, { onRequestError: (_err, request) => seen.push(request) });
  await h.client.request({ type: NbdCommand.read, offset: 512, length: 512, cookie: 42n });
  assert.deepEqual(seen, [{
    flags: 0,
    type: NbdCommand.read,
    cookie: 42n,
    offset: 512n,
    length: 512,
  }]);
  await finish(h);
});
