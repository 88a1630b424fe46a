/**
 * Read-ahead in front of a read-only block backend: small reads that follow
 * closely on earlier ones are served from whole windows fetched once.
 *
 * Why the kernel's own read-ahead is not enough: it works per file. A cold
 * walk of a file system (a node booting: binaries, libraries, configuration)
 * reads many small files that sit next to each other in the image, one at a
 * time, so every one costs a round trip to the server. Here, once a read
 * starts just after the end of a recent one (a forward stream), the whole
 * aligned window around it is fetched in one go and the next small files
 * come out of memory.
 *
 * Random reads rarely start just after a recent read, so they go to the
 * server as they are; reads of a window or more always do. Windows
 * are kept in a bounded least-recently-used cache. Only for read-only
 * images: the bytes of a verified replica never change under us.
 *
 * {@link ReadAhead} is itself a {@link BlockBackend} wrapping another one,
 * so whoever builds the backend (attach, proxy) puts it in front of the
 * resilient image and the layers below never know it is there.
 *
 * @module
 */

import type { BlockBackend } from "./backend.ts";

/** Options of {@link ReadAhead}. */
export interface ReadAheadOptions {
  /** Bytes fetched at once: the window, a power of two ≥ 4096. */
  windowBytes: number;
  /** Bytes of windows kept (at least one window). */
  cacheBytes: number;
}

/** How many recent read ends are remembered to recognise a forward stream. */
const STREAMS = 16;
/**
 * A read starting at most this far after a recent read's end continues its
 * stream. Small, so that random reads seldom look like streams: at 4 KiB
 * QD32 over 256 MiB a window-sized gap (512 KiB) made 3% of reads fetch a
 * window and cost the proxy 37% of its IOPS.
 */
const NEAR_BYTES = 32 * 1024;

/** Counters, for `list` and tests. */
export interface ReadAheadStats {
  /** Reads served entirely from cached windows. */
  hits: number;
  /** Windows fetched whole. */
  windowsFetched: number;
  /** Reads passed through to the server as they were. */
  passedThrough: number;
}

/**
 * A read-ahead cache in front of a read-only `backend`. Reads may be served
 * from cached windows; writes and flushes go to `backend` unchanged (it is
 * read-only, so it refuses writes in its own way).
 */
export class ReadAhead implements BlockBackend {
  readonly stats: ReadAheadStats = { hits: 0, windowsFetched: 0, passedThrough: 0 };
  readonly #backend: BlockBackend;
  readonly #window: number;
  readonly #maxWindows: number;
  /** Window index → its bytes (or the fetch under way); Map order is recency. */
  readonly #windows = new Map<number, Promise<Uint8Array>>();
  /** Where recent reads ended, newest last. */
  readonly #ends: number[] = [];

  constructor(backend: BlockBackend, options: ReadAheadOptions) {
    if (!backend.readOnly) {
      // Cached windows would go stale under writes.
      throw new RangeError("read-ahead needs a read-only backend");
    }
    const { windowBytes, cacheBytes } = options;
    if (
      !Number.isInteger(windowBytes) || windowBytes < 4096 ||
      (windowBytes & (windowBytes - 1)) !== 0
    ) {
      throw new RangeError(`read-ahead window ${windowBytes} is not a power of two ≥ 4096`);
    }
    this.#backend = backend;
    this.#window = windowBytes;
    this.#maxWindows = Math.max(1, Math.floor(cacheBytes / windowBytes));
  }

  get sizeBytes(): number {
    return this.#backend.sizeBytes;
  }

  get readOnly(): boolean {
    return true;
  }

  /** Fill `dest` with the bytes at `offset`. */
  async read(offset: number, dest: Uint8Array): Promise<void> {
    const end = offset + dest.length;
    const first = Math.floor(offset / this.#window);
    const last = Math.floor((end - 1) / this.#window);
    const cached = dest.length > 0 && dest.length < this.#window &&
      (this.#has(first) && this.#has(last) || this.#followsRecent(offset));
    this.#remember(end);
    if (!cached) {
      this.stats.passedThrough++;
      await this.#backend.read(offset, dest);
      return;
    }
    if (this.#has(first) && this.#has(last)) this.stats.hits++;
    for (let index = first; index <= last; index++) {
      const start = index * this.#window;
      const bytes = await this.#windowAt(index);
      const from = Math.max(offset, start);
      const to = Math.min(end, start + bytes.length);
      dest.set(bytes.subarray(from - start, to - start), from - offset);
    }
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.#backend.write(offset, data);
  }

  flush(): Promise<void> {
    return this.#backend.flush();
  }

  #has(index: number): boolean {
    return this.#windows.has(index);
  }

  /** True when `offset` starts just after the end of a recent read. */
  #followsRecent(offset: number): boolean {
    for (const end of this.#ends) {
      if (offset >= end && offset - end < NEAR_BYTES) return true;
    }
    return false;
  }

  #remember(end: number): void {
    this.#ends.push(end);
    if (this.#ends.length > STREAMS) this.#ends.shift();
  }

  /** The bytes of window `index`: cached, being fetched, or fetched now. */
  #windowAt(index: number): Promise<Uint8Array> {
    const known = this.#windows.get(index);
    if (known) {
      // Most recently used goes last.
      this.#windows.delete(index);
      this.#windows.set(index, known);
      return known;
    }
    const start = index * this.#window;
    const bytes = new Uint8Array(Math.min(this.#window, this.#backend.sizeBytes - start));
    this.stats.windowsFetched++;
    const fetching = this.#backend.read(start, bytes).then(() => bytes);
    this.#windows.set(index, fetching);
    // A failed fetch is not cached: the next read tries again.
    fetching.catch(() => {
      if (this.#windows.get(index) === fetching) this.#windows.delete(index);
    });
    while (this.#windows.size > this.#maxWindows) {
      const oldest = this.#windows.keys().next().value!;
      this.#windows.delete(oldest);
    }
    return fetching;
  }
}

/** `backend` behind read-ahead when `options` asks for it, else `backend` itself. */
export function withReadAhead(backend: BlockBackend, options?: ReadAheadOptions): BlockBackend {
  return options ? new ReadAhead(backend, options) : backend;
}
