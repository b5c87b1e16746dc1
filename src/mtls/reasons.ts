// Why an identity or a peer certificate is refused: one reason code each, for logs, the access log and metrics
// (handshake failures by reason), and the error an identity load throws.
import { MeshctlError, type ErrorCode } from '../errors.js';

/**
 * Why a peer's certificate (or this proxy's own, at load) is refused:
 * - `no-certificate`: the peer sent none;
 * - `bad-certificate`: not parseable, a CA certificate used as a leaf, or an extended key usage without the role
 *   (serverAuth for a server, clientAuth for a client);
 * - `no-spiffe-id`: not exactly one URI SAN, or one that is not a SPIFFE workload ID;
 * - `wrong-trust-domain`: the ID's trust domain is not the bundle's;
 * - `untrusted-chain`: no chain from the certificate to a CA of the bundle (signature, issuer, path length);
 * - `expired` / `not-yet-valid`: a certificate of the chain is outside its validity period now;
 * - `identity-not-allowed`: a valid ID the caller's patterns (`services[].identities`) do not list.
 */
export type PeerReason =
  | 'no-certificate'
  | 'bad-certificate'
  | 'no-spiffe-id'
  | 'wrong-trust-domain'
  | 'untrusted-chain'
  | 'expired'
  | 'not-yet-valid'
  | 'identity-not-allowed';

export const PEER_REASONS: readonly PeerReason[] = [
  'no-certificate',
  'bad-certificate',
  'no-spiffe-id',
  'wrong-trust-domain',
  'untrusted-chain',
  'expired',
  'not-yet-valid',
  'identity-not-allowed',
];

/**
 * Why this proxy's own identity files are refused: a peer reason (its certificate checked as a peer's would be),
 * or `unreadable` (a file, or the credential, cannot be read), `malformed` (not PEM of the expected kind),
 * `key-mismatch` (the key is not the certificate's).
 */
export type IdentityReason =
  Exclude<PeerReason, 'identity-not-allowed' | 'no-certificate'> | 'unreadable' | 'malformed' | 'key-mismatch';

/** An identity refused: IDENTITY_EXPIRED for `expired` / `not-yet-valid`, IDENTITY_INVALID otherwise. */
export class IdentityError extends MeshctlError {
  constructor(
    readonly reason: IdentityReason,
    message: string,
    hint: string,
    options?: { cause?: unknown; details?: readonly string[] },
  ) {
    super(identityErrorCode(reason), message, hint, options);
  }
}

function identityErrorCode(reason: IdentityReason): ErrorCode {
  return reason === 'expired' || reason === 'not-yet-valid' ? 'IDENTITY_EXPIRED' : 'IDENTITY_INVALID';
}
