/**
 * Read-ahead windows: always the right bytes; a forward stream of small
 * reads costs one fetch per window; random and large reads pass through;
 * concurrent readers share a fetch; a failed fetch is not cached; the cache
 * stays within its bound. As a backend wrapper: only in front of a
 * read-only backend, writes and flushes passed to it.
 *
 * @module
 */

import assert from "node:assert/strict";
import type { BlockBackend } from "../../lib/backend.ts";
import { ReadAhead, withReadAhead } from "../../lib/readahead.ts";
import { randomBytes } from "../../tools/random.ts";
import { MemoryBackend } from "./support/memory_backend.ts";

const KiB = 1024;

/** A ReadAhead over a read-only backend holding `image`, recording every fetch. */
function over(image: Uint8Array, windowBytes = 64 * KiB, cacheBytes = 1024 * KiB) {
  const fetches: { offset: number; length: number }[] = [];
  let failNext = false;
  const backend: BlockBackend = {
    sizeBytes: image.length,
    readOnly: true,
    read(offset, dest) {
      fetches.push({ offset, length: dest.length });
      if (failNext) {
        failNext = false;
        return Promise.reject(new Error("server gone"));
      }
      assert.ok(
        offset + dest.length <= image.length,
        `fetch past the end: ${offset}+${dest.length}`,
      );
      dest.set(image.subarray(offset, offset + dest.length));
      return Promise.resolve();
    },
    write: () => Promise.reject(new Error("read-only")),
    flush: () => Promise.resolve(),
  };
  const cache = new ReadAhead(backend, { windowBytes, cacheBytes });
  return { cache, fetches, failOnce: () => failNext = true };
}

async function read(cache: ReadAhead, offset: number, length: number): Promise<Uint8Array> {
  const dest = new Uint8Array(length);
  await cache.read(offset, dest);
  return dest;
}

/** A small deterministic generator for offsets. */
function numbers(seed: number): () => number {
  let x = seed;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
}

Deno.test("read-ahead returns the right bytes for every mix of reads, up to an odd-sized end", async () => {
  const image = randomBytes(3 * 1024 * KiB + 777, 31);
  const { cache } = over(image, 16 * KiB, 128 * KiB);
  const next = numbers(7);
  let offset = 0;
  for (let i = 0; i < 3000; i++) {
    const kind = next() % 4;
    if (kind === 0) offset = next() % image.length; // jump
    const length = Math.min(
      image.length - offset,
      kind === 3 ? 1 + next() % (40 * KiB) : 1 + next() % (6 * KiB),
    );
    if (length <= 0) {
      offset = 0;
      continue;
    }
    const got = await read(cache, offset, length);
    assert.deepEqual(
      got,
      image.subarray(offset, offset + length),
      `read ${i}: ${offset}+${length}`,
    );
    offset += length + (next() % 3 === 0 ? next() % 8192 : 0);
    if (offset >= image.length) offset = 0;
  }
  // Every path was taken: whole windows, hits, and reads passed through.
  assert.ok(cache.stats.windowsFetched > 20, `windows ${cache.stats.windowsFetched}`);
  assert.ok(cache.stats.hits > 100, `hits ${cache.stats.hits}`);
  assert.ok(cache.stats.passedThrough > 100, `passed through ${cache.stats.passedThrough}`);
});

Deno.test("a forward stream of small reads fetches each window once", async () => {
  const image = randomBytes(1024 * KiB, 32);
  const { cache, fetches } = over(image, 64 * KiB);
  // 4 KiB files one after another, with small gaps, over 256 KiB.
  for (let offset = 0; offset < 256 * KiB; offset += 5 * KiB) {
    assert.deepEqual(await read(cache, offset, 4 * KiB), image.subarray(offset, offset + 4 * KiB));
  }
  // The first read has nothing before it and goes as it is; then windows 0 to 3 (the
  // last read reaches 259 KiB, into window 4).
  assert.equal(cache.stats.passedThrough, 1);
  assert.deepEqual(fetches.slice(1).map((f) => f.offset / (64 * KiB)), [0, 1, 2, 3, 4]);
  assert.ok(fetches.slice(1).every((f) => f.length === 64 * KiB));
  assert.ok(cache.stats.hits > 40, `hits ${cache.stats.hits}`);
});

Deno.test("random small reads and reads of a window or more pass through", async () => {
  const image = randomBytes(64 * 1024 * KiB, 33);
  const { cache, fetches } = over(image, 64 * KiB);
  const next = numbers(11);
  for (let i = 0; i < 500; i++) {
    const offset = (next() % (image.length / 4096)) * 4096;
    await read(cache, offset, 4096);
  }
  const windows = fetches.filter((f) => f.length === 64 * KiB).length;
  assert.ok(windows < 25, `${windows} windows fetched for 500 random reads`);
  fetches.length = 0;
  // Large reads, even in a forward stream, go straight through.
  for (let offset = 0; offset < 1024 * KiB; offset += 64 * KiB) {
    assert.deepEqual(
      await read(cache, offset, 64 * KiB),
      image.subarray(offset, offset + 64 * KiB),
    );
  }
  assert.deepEqual(fetches.map((f) => f.length), Array(16).fill(64 * KiB));
  assert.deepEqual(
    fetches.map((f) => f.offset),
    Array.from({ length: 16 }, (_, i) => i * 64 * KiB),
  );
});

Deno.test("concurrent reads in one window share its fetch", async () => {
  const image = randomBytes(512 * KiB, 34);
  const { cache, fetches } = over(image, 64 * KiB);
  await read(cache, 0, 4096); // a stream starts
  const reads = Array.from({ length: 8 }, (_, i) => read(cache, 4096 + i * 4096, 4096));
  const got = await Promise.all(reads);
  got.forEach((bytes, i) =>
    assert.deepEqual(bytes, image.subarray(4096 + i * 4096, 8192 + i * 4096))
  );
  assert.equal(fetches.filter((f) => f.length === 64 * KiB).length, 1);
});

Deno.test("a failed window fetch fails its reads and is not cached", async () => {
  const image = randomBytes(512 * KiB, 35);
  const { cache, fetches, failOnce } = over(image, 64 * KiB);
  await read(cache, 0, 4096);
  failOnce();
  await assert.rejects(read(cache, 4096, 4096), /server gone/);
  const before = fetches.length;
  assert.deepEqual(await read(cache, 8192, 4096), image.subarray(8192, 12288));
  assert.equal(fetches.length, before + 1, "the window is fetched again");
  assert.equal(fetches.at(-1)!.offset, 0);
});

Deno.test("the cache keeps at most its bound, least recently used out first", async () => {
  const image = randomBytes(1024 * KiB, 36);
  const { cache, fetches } = over(image, 64 * KiB, 128 * KiB); // two windows
  const windowFetches = () => fetches.filter((f) => f.length === 64 * KiB).map((f) => f.offset);
  await read(cache, 0, 1024);
  await read(cache, 2048, 1024); // follows: window 0
  await read(cache, 40 * KiB, 1024); // a hit
  await read(cache, 64 * KiB + 100, 1024); // follows the last: window 1
  await read(cache, 100 * KiB, 1024); // a hit in window 1
  await read(cache, 4096, 1024); // a hit in window 0, now the most recent
  await read(cache, 128 * KiB + 100, 1024); // follows 101 KiB: window 2 evicts window 1
  assert.deepEqual(windowFetches(), [0, 64 * KiB, 128 * KiB]);
  await read(cache, 8192, 1024); // window 0 is still cached
  assert.deepEqual(windowFetches(), [0, 64 * KiB, 128 * KiB]);
  await read(cache, 64 * KiB + 2000, 1024); // follows 41 KiB; window 1 was evicted: fetched again
  assert.deepEqual(windowFetches(), [0, 64 * KiB, 128 * KiB, 64 * KiB]);
});

Deno.test("a window that is not a power of two of at least 4 KiB is refused", () => {
  for (const windowBytes of [0, 2048, 5000, 65535]) {
    assert.throws(
      () =>
        new ReadAhead(new MemoryBackend(1 << 20, { readOnly: true }), {
          windowBytes,
          cacheBytes: 1 << 20,
        }),
      RangeError,
    );
  }
});

Deno.test("read-ahead wraps only a read-only backend, and passes writes and flushes to it", async () => {
  const options = { windowBytes: 64 * KiB, cacheBytes: 1024 * KiB };
  assert.throws(() => new ReadAhead(new MemoryBackend(1 << 20), options), /read-only backend/);
  const backend = new MemoryBackend(randomBytes(1 << 20, 37), { readOnly: true });
  const cache = withReadAhead(backend, options);
  assert.ok(cache instanceof ReadAhead);
  assert.equal(cache.sizeBytes, 1 << 20);
  assert.equal(cache.readOnly, true);
  await assert.rejects(cache.write(0, new Uint8Array(512)), /read-only MemoryBackend/);
  await cache.flush();
  assert.deepEqual(backend.entries("start"), [
    "start write 0+512",
    "start flush",
  ]);
  assert.equal(withReadAhead(backend, undefined), backend, "no options: the backend itself");
});
