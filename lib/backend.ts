/**
 * The narrow interface between a block-device front end (the NBD engine that
 * answers the kernel or an NBD client) and whatever stores the bytes (a 9P
 * image, possibly with failover, or an in-memory fake in tests).
 *
 * Offsets and lengths are plain numbers: images up to 2^53 bytes (8 PiB).
 *
 * @module
 */

/** Storage a block device can be served from. */
export interface BlockBackend {
  /** Size of the image in bytes; no byte at or beyond it is ever requested. */
  readonly sizeBytes: number;
  /** True when writes must be refused. */
  readonly readOnly: boolean;
  /** Fill all of `dest` with the bytes at `offset` (offset + dest.length ≤ sizeBytes). */
  read(offset: number, dest: Uint8Array): Promise<void>;
  /** Write all of `data` at `offset`; resolves when the server has accepted it. */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Make every write acknowledged so far durable. */
  flush(): Promise<void>;
}
