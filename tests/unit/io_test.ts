/**
 * The socket plumbing both protocols share (lib/io.ts): exact reads through
 * one buffer, 9P framing on top of it, and the batched writer, each against
 * streams that cut data where they like, end early, stall or fail.
 */

import assert from "node:assert/strict";
import { ConnectionError, ProtocolError } from "../../lib/errors.ts";
import {
  BATCH_BYTES,
  BatchWriter,
  BufferedReader,
  type ByteStream,
  writeAll,
} from "../../lib/io.ts";
import { FrameReader } from "../../lib/p9/transport.ts";
import { encode, MsgType } from "../../lib/p9/wire.ts";
import { randomBytes, seededRandom } from "../../tools/random.ts";
import { nextTurn } from "../support/wait.ts";

/** A stream that hands out `data` in the chunk sizes `chunks` gives, then EOF (or `failure`). */
class ChunkedSource implements ByteStream {
  /** The length of every buffer read was called with, and whether it was a caller's. */
  readonly reads: { length: number; buffer: ArrayBufferLike }[] = [];
  #at = 0;

  constructor(
    readonly data: Uint8Array,
    readonly chunks: () => number = () => Infinity,
    readonly failure?: Error,
  ) {}

  read(p: Uint8Array): Promise<number | null> {
    this.reads.push({ length: p.length, buffer: p.buffer });
    if (this.#at >= this.data.length) {
      return this.failure ? Promise.reject(this.failure) : Promise.resolve(null);
    }
    const n = Math.min(p.length, this.chunks(), this.data.length - this.#at);
    p.set(this.data.subarray(this.#at, this.#at + n));
    this.#at += n;
    return Promise.resolve(n);
  }

  write(): Promise<number> {
    return Promise.reject(new Error("read-only test stream"));
  }

  close(): void {}
}

/** A stream that records writes; each write waits for `gate()` when given, and may fail. */
class RecordingSink implements ByteStream {
  /** A copy of every write's bytes (an empty one when {@link keepBytes} is off). */
  readonly writes: Uint8Array[] = [];
  /** The length of every write. */
  readonly lengths: number[] = [];
  keepBytes = true;
  /** The buffer behind every write, to tell a caller's own buffer from a batch. */
  readonly buffers: ArrayBufferLike[] = [];
  fail?: Error;
  #parked: (() => void)[] = [];
  parkWrites = false;

  read(): Promise<number | null> {
    return Promise.resolve(null);
  }

  async write(p: Uint8Array): Promise<number> {
    if (this.parkWrites) await new Promise<void>((resolve) => this.#parked.push(resolve));
    if (this.fail) throw this.fail;
    this.writes.push(this.keepBytes ? p.slice() : new Uint8Array(0));
    this.lengths.push(p.length);
    this.buffers.push(p.buffer);
    return p.length;
  }

  /** Writes waiting for {@link releaseWrites}. */
  get parked(): number {
    return this.#parked.length;
  }

  releaseWrites(): void {
    this.parkWrites = false;
    for (const wake of this.#parked.splice(0)) wake();
  }

  close(): void {}

  /** Everything written, in order. */
  get bytes(): Uint8Array {
    return joined(this.writes);
  }
}

/** A writer on a sink, numbering its items, recording which are done and what errors it reports. */
function recordingWriter(sink = new RecordingSink()) {
  const done: number[] = [];
  const errors: unknown[] = [];
  const writer = new BatchWriter<number>(sink, {
    onDone: (token) => done.push(token),
    onError: (err) => errors.push(err),
  });
  return { sink, writer, done, errors };
}

// --- BufferedReader ---

Deno.test("readFull returns exact spans whatever chunks the stream cuts the data into", async () => {
  const data = randomBytes(10_000, 21);
  const random = seededRandom(5);
  const source = new ChunkedSource(data, () => 1 + random.below(40));
  const reader = new BufferedReader(source, 64);
  const sizes = [1, 3, 28, 63, 64, 65, 200, 7, 1000, 0, 2];
  let at = 0;
  while (at < data.length) {
    const size = Math.min(sizes[at % sizes.length], data.length - at);
    const dest = new Uint8Array(size);
    assert.equal(await reader.readFull(dest), size);
    assert.deepEqual(dest, data.subarray(at, at + size), `at ${at}`);
    at += size;
  }
  assert.equal(await reader.readFull(new Uint8Array(1)), 0, "then end of stream");
});

Deno.test("a payload at least as large as the buffer is read straight into its destination", async () => {
  const data = randomBytes(5000, 2);
  const source = new ChunkedSource(data);
  const reader = new BufferedReader(source, 256);
  const header = new Uint8Array(10);
  assert.equal(await reader.readFull(header), 10);
  const payload = new Uint8Array(4000);
  assert.equal(await reader.readFull(payload), 4000);
  assert.deepEqual(payload, data.subarray(10, 4010));
  // The header's read filled the buffer; the rest of the payload went straight in.
  assert.deepEqual(source.reads.map((r) => r.buffer === payload.buffer), [false, true]);
});

Deno.test("readFull stops short only at end of stream, even in the middle of a read", async () => {
  const data = randomBytes(50, 3);
  const reader = new BufferedReader(new ChunkedSource(data, () => 7), 16);
  const first = new Uint8Array(30);
  assert.equal(await reader.readFull(first), 30);
  const rest = new Uint8Array(30);
  assert.equal(await reader.readFull(rest), 20, "EOF after 20 of 30");
  assert.deepEqual(rest.subarray(0, 20), data.subarray(30));
  assert.equal(await reader.readFull(rest), 0);
});

Deno.test("takeBuffered takes a whole span without reading, or nothing", async () => {
  const data = randomBytes(100, 4);
  const source = new ChunkedSource(data);
  const reader = new BufferedReader(source, 64);
  const first = new Uint8Array(28);
  assert.equal(await reader.readFull(first), 28); // one read buffers 64 bytes
  const reads = source.reads.length;
  const second = new Uint8Array(28);
  assert.ok(reader.takeBuffered(second));
  assert.deepEqual(second, data.subarray(28, 56));
  assert.equal(reader.bufferedBytes, 8);
  const third = new Uint8Array(28);
  assert.ok(!reader.takeBuffered(third), "8 bytes are not enough");
  assert.equal(reader.bufferedBytes, 8, "and none of them were taken");
  assert.equal(source.reads.length, reads, "no read for either");
  assert.equal(await reader.readFull(third), 28);
  assert.deepEqual(third, data.subarray(56, 84));
});

Deno.test("discard skips buffered and unread bytes alike, and says when the stream ended", async () => {
  const data = randomBytes(1000, 6);
  for (const capacity of [0, 16, 4096]) {
    const reader = new BufferedReader(new ChunkedSource(data, () => 13), capacity);
    const head = new Uint8Array(5);
    assert.equal(await reader.readFull(head), 5);
    assert.ok(await reader.discard(500), `capacity ${capacity}`);
    const next = new Uint8Array(10);
    assert.equal(await reader.readFull(next), 10);
    assert.deepEqual(next, data.subarray(505, 515), `capacity ${capacity}`);
    assert.equal(await reader.discard(1000), false, "past the end");
  }
});

Deno.test("an unbuffered reader (capacity 0) never reads past what it was asked for", async () => {
  const data = randomBytes(100, 8);
  const source = new ChunkedSource(data);
  const reader = new BufferedReader(source, 0);
  const part = new Uint8Array(30);
  assert.equal(await reader.readFull(part), 30);
  assert.deepEqual(source.reads.map((r) => r.length), [30]);
  // Whoever reads the stream next gets the very next byte.
  const after = new Uint8Array(70);
  assert.equal(await source.read(after), 70);
  assert.deepEqual(after, data.subarray(30));
});

Deno.test("a failing stream read rejects with a ConnectionError caused by it", async () => {
  const reset = new Deno.errors.ConnectionReset("reset by peer");
  const reader = new BufferedReader(new ChunkedSource(new Uint8Array(3), undefined, reset), 16);
  await assert.rejects(reader.readFull(new Uint8Array(10)), (err: unknown) => {
    assert.ok(err instanceof ConnectionError);
    assert.equal(err.cause, reset);
    assert.match(err.message, /reset by peer/);
    return true;
  });
});

// --- FrameReader, the 9P framing on it ---

function frames(count: number): Uint8Array[] {
  return Array.from(
    { length: count },
    (_, i) => encode(i, { type: MsgType.Rread, data: randomBytes(i * 37, i + 1) }),
  );
}

/** `parts` one after another, in one array. */
const joined = (parts: Uint8Array[]) => Uint8Array.from(parts.flatMap((part) => [...part]));

Deno.test("FrameReader cuts frames across chunk boundaries, growing its buffer for a large one", async () => {
  const expected = frames(40);
  const random = seededRandom(9);
  const source = new ChunkedSource(joined(expected), () => 1 + random.below(300));
  const reader = new FrameReader(source, 1 << 20, 64);
  for (const frame of expected) assert.deepEqual(await reader.next(), frame);
  assert.equal(await reader.next(), null, "a clean end between frames");
});

Deno.test("FrameReader hands out every frame of one read without reading again", async () => {
  const expected = frames(5);
  const source = new ChunkedSource(joined(expected));
  const reader = new FrameReader(source, 1 << 20, 4096);
  assert.deepEqual(await reader.next(), expected[0]);
  const reads = source.reads.length;
  for (const frame of expected.slice(1)) assert.deepEqual(reader.buffered(), frame);
  assert.equal(reader.buffered(), undefined);
  assert.equal(source.reads.length, reads);
});

Deno.test("a frame larger than the limit is refused before any buffer grows for it", async () => {
  // A header claiming 64 MiB, and nothing after it.
  const header = new Uint8Array([0, 0, 0, 4, MsgType.Rread, 0, 0]);
  const source = new ChunkedSource(header);
  const reader = new FrameReader(source, 65536, 4096);
  await assert.rejects(reader.next(), ProtocolError);
  assert.ok(
    source.reads.every((r) => r.length <= 4096),
    `read into ${Math.max(...source.reads.map((r) => r.length))} bytes`,
  );
  // At the limit, the same reader takes it.
  const atLimit = encode(1, { type: MsgType.Rread, data: new Uint8Array(65536 - 11) });
  const fits = new FrameReader(new ChunkedSource(atLimit), 65536, 4096);
  assert.deepEqual(await fits.next(), atLimit);
});

Deno.test("a stream ending in the middle of a frame is a ConnectionError", async () => {
  const frame = frames(3)[2];
  for (const cut of [2, 4, frame.length - 1]) {
    const reader = new FrameReader(new ChunkedSource(frame.subarray(0, cut)), 1 << 20, 16);
    await assert.rejects(reader.next(), /middle of a 9P frame/, `cut at ${cut}`);
  }
});

// --- BatchWriter ---

Deno.test("items queued in one turn leave in one write, starting a microtask later", async () => {
  const sink = new RecordingSink();
  const writer = new BatchWriter(sink, { onError: (err) => assert.fail(String(err)) });
  const items = Array.from({ length: 32 }, (_, i) => randomBytes(4096 + 16, i + 1));
  for (const item of items) writer.write(item);
  assert.equal(sink.writes.length, 0, "nothing written in the turn that queued");
  await nextTurn();
  assert.deepEqual(sink.lengths, [32 * (4096 + 16)]);
  assert.deepEqual(sink.bytes, joined(items));
  assert.equal(writer.pendingBytes, 0);
});

Deno.test("a batch never exceeds BATCH_BYTES, and a larger item goes alone from its own buffer", async () => {
  const sink = new RecordingSink();
  const writer = new BatchWriter(sink, { onError: (err) => assert.fail(String(err)) });
  const small = Array.from({ length: 60 }, (_, i) => randomBytes(10_000, i + 1));
  const large = randomBytes(BATCH_BYTES + 1, 99);
  const items = [...small.slice(0, 30), large, ...small.slice(30)];
  for (const item of items) writer.write(item);
  await nextTurn();
  assert.deepEqual(sink.bytes, joined(items));
  const perBatch = Math.floor(BATCH_BYTES / 10_000);
  assert.deepEqual(sink.lengths, [
    perBatch * 10_000,
    (30 - perBatch) * 10_000,
    large.length,
    perBatch * 10_000,
    (30 - perBatch) * 10_000,
  ]);
  assert.equal(sink.buffers[2], large.buffer, "the large item was not copied");
});

Deno.test("items are done once each, in order, and only when their bytes were written", async () => {
  const { sink, writer, done, errors } = recordingWriter();
  sink.parkWrites = true;
  writer.write(new Uint8Array(100), 0);
  await nextTurn();
  assert.equal(sink.parked, 1, "the first write is in progress");
  // Queued while it is: the next write takes them together.
  for (let i = 1; i < 4; i++) writer.write(new Uint8Array(100).fill(i), i);
  assert.deepEqual(done, []);
  assert.equal(writer.pendingBytes, 400);
  sink.releaseWrites();
  await nextTurn();
  assert.deepEqual(done, [0, 1, 2, 3]);
  assert.deepEqual(sink.lengths, [100, 300]);
  assert.equal(writer.pendingBytes, 0);
  assert.equal(errors.length, 0);
});

Deno.test("a failed write is reported once, and every item, queued or later, is done once", async () => {
  const { sink, writer, done, errors } = recordingWriter();
  sink.parkWrites = true;
  writer.write(new Uint8Array(BATCH_BYTES), 0);
  await nextTurn();
  writer.write(new Uint8Array(BATCH_BYTES), 1); // waits behind the first: a batch of its own
  writer.write(new Uint8Array(10), 2);
  const broken = new Deno.errors.BrokenPipe("broken pipe");
  sink.fail = broken;
  sink.releaseWrites();
  await nextTurn();
  assert.deepEqual(errors, [broken]);
  assert.deepEqual(done, [0, 1, 2]);
  // Later items are dropped at once, without a write.
  writer.write(new Uint8Array(10), 3);
  assert.deepEqual(done, [0, 1, 2, 3]);
  await nextTurn();
  assert.deepEqual(errors, [broken]);
  assert.equal(sink.writes.length, 0);
  assert.equal(writer.pendingBytes, 0);
});

Deno.test("close() drops what is queued, lets the write in progress settle, and reports no error", async () => {
  const { sink, writer, done, errors } = recordingWriter();
  sink.parkWrites = true;
  writer.write(new Uint8Array(BATCH_BYTES), 0);
  await nextTurn();
  writer.write(new Uint8Array(10), 1);
  writer.close();
  assert.equal(done.length, 0, "the queued item waits for the write in progress");
  sink.fail = new Deno.errors.BadResource("closed");
  sink.releaseWrites();
  await nextTurn();
  assert.deepEqual(done, [0, 1]);
  assert.equal(errors.length, 0);
  // With nothing in progress, close() drops at once.
  const idle = recordingWriter();
  idle.writer.write(new Uint8Array(1), 7);
  idle.writer.close();
  assert.deepEqual(idle.done, [7]);
  assert.equal(idle.sink.writes.length, 0);
});

Deno.test("a queue that keeps items waiting through thousands of writes keeps their order", async () => {
  const { sink, writer, done, errors } = recordingWriter();
  sink.keepBytes = false;
  // Items too large to share a batch: one write each, so the queue drains slowly.
  const item = new Uint8Array(BATCH_BYTES / 2 + 1);
  const count = 3000;
  for (let i = 0; i < count; i++) writer.write(item, i);
  await nextTurn();
  assert.deepEqual(sink.lengths, done.map(() => item.length));
  assert.deepEqual(done, Array.from({ length: count }, (_, i) => i));
  assert.equal(errors.length, 0);
});

Deno.test("writeAll loops over short writes and refuses a stream that takes nothing", async () => {
  const taken: number[] = [];
  const data = randomBytes(100, 12);
  const got: number[] = [];
  await writeAll({
    write: (p) => {
      const n = Math.min(7, p.length);
      taken.push(n);
      got.push(...p.subarray(0, n));
      return Promise.resolve(n);
    },
  }, data);
  assert.deepEqual(Uint8Array.from(got), data);
  assert.equal(taken.length, 15);
  await assert.rejects(
    writeAll({ write: () => Promise.resolve(0) }, data),
    (err: unknown) => err instanceof ConnectionError && /no progress/.test(err.message),
  );
});
