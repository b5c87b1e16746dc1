// The upstream resolvers: `outbound.resolver.servers` when set, else the `nameserver` lines of /etc/resolv.conf
// (a local stub such as systemd-resolved's 127.0.0.53 included), read again when the file changes.
import { readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';

export interface UpstreamServer {
  readonly address: string;
  readonly port: number;
}

export const RESOLV_CONF = '/etc/resolv.conf';

/** The nameservers of resolv.conf text (IPv6 zone ids dropped; at most the first 3, as glibc uses). */
export function parseResolvConf(text: string): UpstreamServer[] {
  const out: UpstreamServer[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (!m) continue;
    const address = m[1]!.replace(/%.*$/, '');
    if (isIP(address) !== 0) out.push({ address, port: 53 });
  }
  return out.slice(0, 3);
}

/** Upstream servers, from the config or from resolv.conf (re-read when its mtime or size changes). */
export class UpstreamServers {
  private cached: { key: string; servers: UpstreamServer[] } | null = null;

  constructor(
    private readonly configured: readonly UpstreamServer[],
    private readonly path: string = RESOLV_CONF,
  ) {}

  /** Where the list comes from, for logs and /stats. */
  get source(): string {
    return this.configured.length > 0 ? 'outbound.resolver.servers' : this.path;
  }

  list(): readonly UpstreamServer[] {
    if (this.configured.length > 0) return this.configured;
    let key: string;
    try {
      const st = statSync(this.path);
      key = `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch {
      return [];
    }
    if (this.cached?.key !== key) {
      let text = '';
      try {
        text = readFileSync(this.path, 'utf8');
      } catch {
        // unreadable: no servers (the forwarder answers SERVFAIL naming the file)
      }
      this.cached = { key, servers: parseResolvConf(text) };
    }
    return this.cached.servers;
  }
}
