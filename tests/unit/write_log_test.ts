/**
 * WriteLog: what a new session replays (every write since the last
 * successful flush, in order, as copies) and the background flush that
 * bounds its memory.
 *
 * @module
 */

import assert from "node:assert/strict";
import { WRITE_LOG_MAX_BYTES, WriteLog } from "../../lib/failover/write_log.ts";
import { MemoryBackend } from "./support/memory_backend.ts";

const noFlush = () => Promise.reject(new Error("no background flush expected"));

/** What `log` replays on a fresh session, as the session's log lines. */
async function replayed(log: WriteLog): Promise<string[]> {
  const session = new MemoryBackend(1 << 20);
  await log.replayOn(session);
  return session.entries("end");
}

Deno.test("a new session replays every write since the last successful flush, in order; a failed flush forgets nothing", async () => {
  const log = new WriteLog();
  const buffer = new Uint8Array(512).fill(1);
  log.record(0, buffer, noFlush);
  buffer.fill(2); // the caller reuses its buffer: the log kept a copy
  log.record(4096, new Uint8Array(1024), noFlush);
  assert.equal(log.length, 2);
  const session = new MemoryBackend(1 << 20);
  await log.replayOn(session);
  assert.deepEqual(session.entries("end"), ["end write 0+512", "end write 4096+1024"]);
  assert.ok(session.data.subarray(0, 512).every((b) => b === 1));

  await assert.rejects(log.flush(() => Promise.reject(new Error("fsync failed"))), /fsync/);
  assert.equal(log.length, 2, "a failed flush covers nothing");
  await log.flush(() => Promise.resolve());
  assert.equal(log.length, 0);
  assert.deepEqual(await replayed(log), []);
});

Deno.test("a write logged while a flush runs is not covered by it", async () => {
  const log = new WriteLog();
  log.record(0, new Uint8Array(512), noFlush);
  let finish!: () => void;
  const flushing = log.flush(() => new Promise<void>((resolve) => finish = resolve));
  log.record(8192, new Uint8Array(512), noFlush);
  finish();
  await flushing;
  assert.deepEqual(await replayed(log), ["end write 8192+512"]);
});

Deno.test("overlapping flushes each forget only the writes logged before they started", async () => {
  // A background flush and the kernel's FLUSH (or two NBD clients' FLUSHes) can overlap.
  const log = new WriteLog();
  log.record(0, new Uint8Array(512), noFlush);
  log.record(1024, new Uint8Array(512), noFlush);
  let finishFirst!: () => void;
  const first = log.flush(() => new Promise<void>((resolve) => finishFirst = resolve));
  log.record(2048, new Uint8Array(512), noFlush);
  let finishSecond!: () => void;
  const second = log.flush(() => new Promise<void>((resolve) => finishSecond = resolve));
  finishFirst();
  await first;
  // Acknowledged after the second flush was sent: it does not cover these.
  log.record(3072, new Uint8Array(512), noFlush);
  log.record(4096, new Uint8Array(512), noFlush);
  finishSecond();
  await second;
  assert.deepEqual(await replayed(log), ["end write 3072+512", "end write 4096+512"]);

  // The other order: the later flush finishes first; the earlier one then has nothing left.
  let finishEarlier!: () => void;
  const earlier = log.flush(() => new Promise<void>((resolve) => finishEarlier = resolve));
  log.record(5120, new Uint8Array(512), noFlush);
  await log.flush(() => Promise.resolve());
  log.record(6144, new Uint8Array(512), noFlush);
  finishEarlier();
  await earlier;
  assert.deepEqual(await replayed(log), ["end write 6144+512"]);
});

Deno.test(`past ${WRITE_LOG_MAX_BYTES / 1024 / 1024} MiB of logged writes, a write starts one background flush at a time`, async () => {
  const log = new WriteLog();
  const calls: (() => void)[] = [];
  const flush = () => new Promise<void>((resolve) => calls.push(resolve));
  log.record(0, new Uint8Array(WRITE_LOG_MAX_BYTES), flush);
  assert.equal(calls.length, 0, "at the bound, not past it");
  log.record(0, new Uint8Array(1), flush);
  assert.equal(calls.length, 1);
  log.record(0, new Uint8Array(1), flush);
  assert.equal(calls.length, 1, "one background flush at a time");
  calls[0]();
  // One turn of the event loop: every microtask of the finished flush's
  // promise chain has run by then (an order, not a duration).
  await new Promise((resolve) => setTimeout(resolve, 0));
  log.record(0, new Uint8Array(1), flush);
  assert.equal(calls.length, 2, "the next write past the bound starts another");
});
