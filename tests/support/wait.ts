/**
 * Synchronisation for tests without sleeps: wait for the exact condition a
 * test needs, with a bound, so a regression fails the test instead of
 * hanging it or passing by luck of timing.
 *
 * @module
 */

/**
 * Resolve once `condition()` holds, checking now and then after every turn
 * of the event loop; reject after `timeoutMs`, naming `what` was awaited.
 */
export async function waitFor(
  condition: () => boolean,
  what: string,
  timeoutMs = 2000,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await nextTurn();
  }
}

/**
 * Resolve after every microtask queued so far, and every one those queue,
 * has run: a timer fires only once the microtask queue is empty. Over
 * in-memory streams, where no step waits for the operating system, that is
 * a point where everything that could happen without the test has happened,
 * so "X has not happened" can be asserted.
 */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}
