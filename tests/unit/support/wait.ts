/**
 * Synchronisation for tests without sleeps.
 *
 * @module
 */

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
