/**
 * Waiting for the kernel to finish something it does asynchronously (a loop
 * device released after autoclear, a helper exiting after its unmount): check
 * every 50 ms, give up after a bound. Resolves with whether it happened.
 */
export async function waitFor(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((done) => setTimeout(done, 50));
  }
}
