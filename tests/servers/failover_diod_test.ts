/**
 * ResilientImage against real diod processes: killed with SIGKILL and
 * restarted on the same port (a reboot), or frozen with SIGSTOP for longer
 * than the request timeout while a second diod holds the same image; and the
 * same with diods that require MUNGE, where every new session must bring a
 * fresh credential (munged refuses a replayed one). Readers loop all the
 * while; every read must succeed with the right bytes.
 * Reports SKIPPED through the tier mechanism when diod is not installed.
 *
 * @module
 */

import assert from "node:assert/strict";
import { ResilientImage, type ResilientOptions } from "../../lib/failover/mod.ts";
import { libmungeClient } from "../../lib/kernel/munge.ts";
import { parseSpec } from "../../lib/spec.ts";
import {
  diodUnavailable,
  type RestartableDiod,
  startRestartableDiod,
} from "../../tools/restartable_diod.ts";
import { randomBytes } from "../../tools/random.ts";
import { mungeUnavailable, type RunningMunged, startMunged } from "../../tools/servers.ts";
import { skipTier } from "../support/tier.ts";
import { waitFor } from "../support/wait.ts";

/** Reads that show the readers are in full flow: before a fault, and again after it. */
const READS_IN_FLOW = 20;
/** How long the killed diod stays down before it restarts. */
const OUTAGE_MS = 1000;

/** Sanitizers off: a reconnect loop may still sleep in its backoff when a test ends. */
function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, sanitizeOps: false, sanitizeResources: false, fn });
}

/** Readers that loop over random blocks until stopped, counting errors and wrong bytes. */
function startReaders(image: ResilientImage, file: Uint8Array, count: number) {
  const stats = { reads: 0, errors: 0, mismatches: 0, lastError: "" };
  let stopping = false;
  let x = 12345;
  const loops = Array.from({ length: count }, async () => {
    const dest = new Uint8Array(65536);
    while (!stopping) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const offset = (x % (file.length / 512 - 128)) * 512;
      try {
        await image.read(offset, dest);
        stats.reads++;
        if (!dest.every((b, i) => b === file[offset + i])) stats.mismatches++;
      } catch (err) {
        stats.errors++;
        stats.lastError = String(err);
      }
    }
  });
  return {
    stats,
    /** Resolve once more than `READS_IN_FLOW` reads completed from now; fail after 10 s. */
    async flowing(what: string) {
      const from = stats.reads;
      await waitFor(() => stats.reads > from + READS_IN_FLOW, what, 10_000);
    },
    async stop() {
      stopping = true;
      await Promise.all(loops);
      return stats;
    },
  };
}

async function withDiods(
  count: number,
  file: Uint8Array,
  body: (diods: RestartableDiod[]) => Promise<void>,
  options: { auth?: RunningMunged } = {},
): Promise<void> {
  const unavailable = diodUnavailable();
  if (unavailable) {
    skipTier("servers (failover against diod)", unavailable);
    return;
  }
  const dirs: string[] = [];
  const diods: RestartableDiod[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const dir = await Deno.makeTempDir({ prefix: "9nbd-failover-" });
      dirs.push(dir);
      await Deno.writeFile(`${dir}/image.img`, file);
      diods.push(await startRestartableDiod(dir, undefined, options));
    }
    await body(diods);
  } finally {
    await Promise.all(diods.map((d) => d.stop()));
    await Promise.all(dirs.map((d) => Deno.remove(d, { recursive: true }).catch(() => {})));
  }
}

/**
 * Run `body` with a munged of its own and diods that require MUNGE through
 * it; `minted` lists every credential 9nbd made, in order.
 */
async function withAuthenticatingDiods(
  count: number,
  file: Uint8Array,
  body: (diods: RestartableDiod[], auth: ResilientOptions, minted: string[]) => Promise<void>,
): Promise<void> {
  const unavailable = mungeUnavailable();
  if (unavailable) {
    skipTier("servers (failover against diod with MUNGE)", unavailable);
    return;
  }
  const munged = await startMunged();
  try {
    const libmunge = libmungeClient(munged.socket);
    const minted: string[] = [];
    const auth: ResilientOptions = {
      auth: "munge",
      credentials: {
        async encode() {
          const credential = await libmunge.encode();
          minted.push(credential);
          return credential;
        },
      },
    };
    await withDiods(count, file, (diods) => body(diods, auth, minted), { auth: munged });
  } finally {
    await munged.stop();
  }
}

test("diod killed with SIGKILL under four looping readers and restarted 1 s later: zero errors, right bytes", async () => {
  const file = randomBytes(8 << 20, 16);
  await withDiods(1, file, async ([diod]) => {
    const image = await ResilientImage.open([parseSpec(diod.specFor("image.img"))], {
      timeoutMs: 2000,
    });
    try {
      const readers = startReaders(image, file, 4);
      await readers.flowing("reads before the crash");
      await diod.crash();
      // Not a wait for a condition: the outage itself, a server down for a
      // real second while the readers keep asking.
      await new Promise((r) => setTimeout(r, OUTAGE_MS));
      await diod.restart();
      await readers.flowing("reads after the restart");
      const stats = await readers.stop();
      assert.equal(stats.errors, 0, stats.lastError);
      assert.equal(stats.mismatches, 0);
      assert.ok(image.reconnects >= 1);
      assert.equal(image.failovers, 0);
    } finally {
      await image.close();
    }
  });
});

test("diod frozen with SIGSTOP longer than the timeout: reads move to the second diod, zero errors", async () => {
  const file = randomBytes(8 << 20, 17);
  await withDiods(2, file, async ([primary, secondary]) => {
    const image = await ResilientImage.open(
      [parseSpec(primary.specFor("image.img")), parseSpec(secondary.specFor("image.img"))],
      { timeoutMs: 500 },
    );
    try {
      const readers = startReaders(image, file, 4);
      await readers.flowing("reads before the freeze");
      primary.hang();
      await waitFor(() => image.failovers === 1, "the failover", 10_000);
      await readers.flowing("reads after failover");
      const stats = await readers.stop();
      assert.equal(stats.errors, 0, stats.lastError);
      assert.equal(stats.mismatches, 0);
      assert.equal(image.server, `127.0.0.1:${secondary.port}`);
      assert.match(image.lastError ?? "", /no reply to .* in 0\.5 s/);
    } finally {
      primary.resume();
      await image.close();
    }
  });
});

test("diod requiring MUNGE, killed and restarted under four readers: the new session authenticates afresh, zero errors", async () => {
  const file = randomBytes(8 << 20, 18);
  await withAuthenticatingDiods(1, file, async ([diod], auth, minted) => {
    const image = await ResilientImage.open([parseSpec(diod.specFor("image.img"))], {
      timeoutMs: 2000,
      ...auth,
    });
    try {
      const readers = startReaders(image, file, 4);
      await readers.flowing("reads before the crash");
      const before = minted.length;
      await diod.crash();
      // The outage itself: a server down for a real second (see the test above).
      await new Promise((r) => setTimeout(r, OUTAGE_MS));
      await diod.restart();
      await readers.flowing("reads after the restart");
      const stats = await readers.stop();
      assert.equal(stats.errors, 0, stats.lastError);
      assert.equal(stats.mismatches, 0);
      assert.ok(image.reconnects >= 1);
      // munged refuses a replayed credential: only a fresh one gets the session back.
      assert.ok(minted.length > before, "the reconnect minted a credential");
      assert.equal(new Set(minted).size, minted.length, "every credential is new");
    } finally {
      await image.close();
    }
  });
});

test("two diods requiring MUNGE: the serving one killed, reads fail over to the other with a fresh credential, zero errors", async () => {
  const file = randomBytes(8 << 20, 19);
  await withAuthenticatingDiods(2, file, async ([primary, secondary], auth, minted) => {
    const image = await ResilientImage.open(
      [parseSpec(primary.specFor("image.img")), parseSpec(secondary.specFor("image.img"))],
      { timeoutMs: 2000, ...auth },
    );
    try {
      const readers = startReaders(image, file, 4);
      await readers.flowing("reads before the crash");
      const before = minted.length;
      await primary.crash();
      await waitFor(() => image.failovers === 1, "the failover", 10_000);
      await readers.flowing("reads after failover");
      const stats = await readers.stop();
      assert.equal(stats.errors, 0, stats.lastError);
      assert.equal(stats.mismatches, 0);
      assert.equal(image.server, `127.0.0.1:${secondary.port}`);
      assert.ok(minted.length > before, "the failover minted a credential");
      assert.equal(new Set(minted).size, minted.length, "every credential is new");
    } finally {
      await image.close();
    }
  });
});
