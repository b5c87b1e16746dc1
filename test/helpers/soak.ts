// How long a repeated test runs: the quick count in `npm test`, the full one in `npm run test:soak` (MESHCTL_SOAK=1).
// Repetition only: every path a test takes is in the quick count too.
export const SOAK = process.env.MESHCTL_SOAK === '1';

/** `quick` in npm test, `soak` under npm run test:soak. */
export function soakCount(quick: number, soak: number): number {
  return SOAK ? soak : quick;
}
