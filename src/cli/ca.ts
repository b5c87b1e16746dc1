// `meshctl ca init|issue|bundle`: a trust domain's CA and short-lived workload certificates for fleets with no CA
// (src/mtls/ca.ts). Prints what it wrote; the key files are mode 0600.
import type { Command } from 'commander';
import { MeshctlError } from '../errors.js';
import { DEFAULT_TRUST_DOMAIN } from '../mtls/spiffe-id.js';

const UNIT_MS: Readonly<Record<string, number>> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A certificate lifetime: a whole number of seconds, minutes, hours or days (`24h`, `90d`); no timer bound. */
function lifetime(text: string): number {
  const m = /^(\d{1,9})(s|m|h|d)$/.exec(text);
  if (m === null || Number(m[1]) === 0)
    throw new MeshctlError(
      'CONFIG_INVALID',
      `--ttl ${JSON.stringify(text)}: expected a whole number with a unit s, m, h or d, greater than zero`,
      'give a lifetime such as 24h, 90m or 30d',
    );
  return Number(m[1]) * UNIT_MS[m[2]!]!;
}

export function register(program: Command): void {
  const ca = program
    .command('ca')
    .description(
      'a small CA for mTLS identities: create a trust domain, issue workload certificates, print the bundle',
    );
  ca.command('init')
    .description("create a trust domain's CA in DIR (ca.pem, ca_key.pem mode 0600); never overwrites one")
    .argument('<dir>', 'directory for the CA (created mode 0700 if missing)')
    .option('--trust-domain <name>', 'the SPIFFE trust domain', DEFAULT_TRUST_DOMAIN)
    .option('--ttl <duration>', "the CA certificate's lifetime (s, m, h or d)", '3650d')
    .action(async (dir: string, options: { trustDomain: string; ttl: string }) => {
      const { initCa } = await import('../mtls/ca.js');
      const created = await initCa(dir, { trustDomain: options.trustDomain, ttlMs: lifetime(options.ttl) });
      process.stdout.write(
        `created the CA of trust domain ${created.trustDomain} (spiffe://${created.trustDomain}), valid until ${created.notAfter.toISOString()}\n` +
          `  certificate: ${created.certificate}\n  key:         ${created.key} (mode 0600)\n`,
      );
    });
  ca.command('issue')
    .description('issue a workload certificate for a SPIFFE ID: writes svid.pem, svid_key.pem (0600), svid_bundle.pem')
    .requiredOption('--ca <dir>', 'the CA directory (meshctl ca init)')
    .requiredOption(
      '--id <spiffe-id>',
      "the workload's SPIFFE ID, spiffe://TRUST-DOMAIN/PATH, in the CA's trust domain",
    )
    .requiredOption(
      '--out <dir>',
      'directory for the files (created if missing; existing files are replaced atomically)',
    )
    .option('--ttl <duration>', "the certificate's lifetime (short: rotate by issuing again)", '24h')
    .action(async (options: { ca: string; id: string; out: string; ttl: string }) => {
      const ttlMs = lifetime(options.ttl);
      const { issueIdentity } = await import('../mtls/ca.js');
      const issued = await issueIdentity({ caDir: options.ca, id: options.id, outDir: options.out, ttlMs });
      process.stdout.write(
        `issued ${issued.spiffeId.text} (serial ${issued.serialNumber}), valid ${issued.notBefore.toISOString()} to ${issued.notAfter.toISOString()}\n` +
          `  certificate: ${issued.paths.certificate}\n  key:         ${issued.paths.key} (mode 0600)\n  bundle:      ${issued.paths.bundle}\n`,
      );
    });
  ca.command('bundle')
    .description("print the trust bundle (the CA certificate, PEM) for peers' mtls.identity.bundle")
    .requiredOption('--ca <dir>', 'the CA directory (meshctl ca init)')
    .action(async (options: { ca: string }) => {
      const { caBundle } = await import('../mtls/ca.js');
      process.stdout.write(await caBundle(options.ca));
    });
}
