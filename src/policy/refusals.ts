// Why the proxy refuses a connection at accept: the reasons shared by the data plane (not redirected, a loop) and
// mesh policy (denied, limits, no endpoint). One list, counted in metrics and named in the access log.

/**
 * Why a connection was refused without connecting anywhere: not redirected, aimed at the proxy itself, no fd, or
 * by mesh policy (src/policy): registry-only (no service matched), circuit-open, fault-abort, no-endpoint (outbound
 * services); denied, rate-limited, over-capacity (inbound ports); plaintext-refused (mtls.inbound strict: a
 * plaintext connection arrived through capture).
 */
export type RefusalReason =
  | 'not-redirected'
  | 'self-loop'
  | 'no-fd'
  | 'registry-only'
  | 'circuit-open'
  | 'fault-abort'
  | 'no-endpoint'
  | 'denied'
  | 'rate-limited'
  | 'over-capacity'
  | 'plaintext-refused';

export const REFUSAL_REASONS: readonly RefusalReason[] = [
  'not-redirected',
  'self-loop',
  'no-fd',
  'registry-only',
  'circuit-open',
  'fault-abort',
  'no-endpoint',
  'denied',
  'rate-limited',
  'over-capacity',
  'plaintext-refused',
];
