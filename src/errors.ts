// The one error type meshctl throws on purpose, and the catalogue of its codes.
// Every code is documented in README.md (| Code | Meaning | How to fix |); the CLI maps codes to exit status.

export const ERROR_CODES = {
  CONFIG_INVALID: 'the config file or a flag has a value meshctl cannot use',
  CONFIG_NOT_FOUND: 'the config file named with --config does not exist or cannot be read',
  CONFIG_PARSE: 'the config file is not valid YAML or JSON',
  USER_NOT_FOUND: 'the proxy user or group does not exist in the user database',
  UNSAFE_CONFIG: 'the config would capture SSH or the proxy itself',
  PARSE_SAVE: 'iptables-save output could not be parsed',
  EXPLAIN_INPUT: 'the flow given to `meshctl explain` is incomplete or malformed',
  BACKEND_UNAVAILABLE: 'the requested netfilter backend is not installed or not usable',
  NOT_ROOT: 'the command needs root (CAP_NET_ADMIN)',
  NETNS_NOT_FOUND: 'the network namespace given with --netns does not exist',
  LOCKED: 'another meshctl command holds the state lock',
  RESTORE_FAILED: 'iptables-restore or nft rejected the rules; the previous rules were restored',
  ROLLBACK_FAILED: 'restoring the previous rules failed; the host may be half-changed',
  REVERT_FAILED: 'the --confirm-within revert kept failing until its hard deadline; capture is still installed',
  VERIFY_FAILED: 'the rules read back from the kernel differ from the plan, or a live probe failed',
  NOT_OWNED: 'a rule or chain meshctl would remove does not carry meshctl ownership markers',
  NOT_INSTALLED: 'there is no meshctl capture installed here',
  LEDGER_CORRUPT: 'the ledger under the state directory is unreadable',
  COMMAND_FAILED: 'a system command meshctl ran failed',
  NO_ORIGINAL_DST: 'a connection reached the proxy without an original destination (not redirected)',
  PROXY_NOT_READY: 'the proxy admin endpoint does not report ready',
  ADDON_UNAVAILABLE: 'the native addon is not built',
  INTERNAL: 'a bug in meshctl',
  LISTEN_FAILED: 'a proxy listener could not be opened (port in use, missing address, bad socket-activation fds)',
  PROXY_USER_MISMATCH:
    'the proxy runs as a uid/gid that the capture rules do not exempt, so its own connections would loop',
  PROXY_UNREADABLE:
    "the proxy user cannot read meshctl's own files (worker entry, addon), so no worker process can start",
  STATE_UNSAFE:
    'the state directory, or a file in it, is not what meshctl made: a symlink, another owner, writable by others, or not a regular file',
  PROXY_MISMATCH:
    'the running proxy does not keep the contract the capture rules need (exempt user, ports per family, inbound mode, DNS)',
  ROUTE_TABLE_IN_USE:
    'the TPROXY routing table (capture.inbound.tproxyRouteTable) is already used by an ip rule or holds routes in the target namespace',
  UNIT_DROPIN_FAILED:
    'the drop-in that keeps a systemd unit of excludeUnits/includeUnits in step (ExecStartPre= units refresh) could not be written or removed',
  CA_EXISTS: '`meshctl ca init` found a CA (certificate or key) already in the directory and changed nothing',
  CA_INVALID:
    "the CA directory given to `meshctl ca` holds no usable CA (missing, unreadable, expired, or a key that is not the certificate's)",
  SPIFFE_ID_INVALID: 'a SPIFFE ID or trust domain is malformed, or outside the trust domain it must be in',
  IDENTITY_INVALID:
    "the mTLS identity files (certificate chain, key, bundle) cannot be used: unreadable, malformed, key not the certificate's, no single SPIFFE ID, or a chain the bundle does not trust",
  WRITE_FAILED: 'a file meshctl was asked to write (a CA, an identity, the access log) could not be written',
  IDENTITY_EXPIRED: 'the mTLS identity certificate (or a certificate of its chain) has expired or is not yet valid',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/** A failure with a stable code, a message naming the value and its origin, and a hint saying what to do next. */
export class MeshctlError extends Error {
  override readonly name = 'MeshctlError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly hint?: string,
    options?: { cause?: unknown; details?: readonly string[] },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.details = options?.details ?? [];
  }
  /** Extra lines shown under the message (each problem of a config, stderr of a command). */
  readonly details: readonly string[];
}

export function isMeshctlError(error: unknown, code?: ErrorCode): error is MeshctlError {
  return error instanceof MeshctlError && (code === undefined || error.code === code);
}
