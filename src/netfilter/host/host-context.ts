// Read-only host facts for `meshctl explain`: local addresses and the kernel's route choice, optionally inside a
// network namespace (`ip -n NAME`). Never changes anything.
import { execaSync } from 'execa';
import type { HostContext } from '../../capture/explain.js';

function ipJson(netns: string | undefined, args: string[]): unknown {
  const full = [...(netns ? ['-n', netns] : []), '-j', ...args];
  const result = execaSync('ip', full, { reject: false });
  if (result.exitCode !== 0) return null;
  try {
    return JSON.parse(String(result.stdout));
  } catch {
    return null;
  }
}

/** Local addresses and route lookups as `ip` reports them (in `netns` when given). */
export function readHostContext(netns?: string): HostContext {
  const links = (ipJson(netns, ['addr', 'show']) ?? []) as { addr_info?: { local?: string }[] }[];
  const localAddresses = links.flatMap((l) =>
    (l.addr_info ?? []).map((a) => a.local).filter((a): a is string => typeof a === 'string'),
  );
  return {
    localAddresses,
    route(destination) {
      const routes = ipJson(netns, ['route', 'get', destination]) as { dev?: string; prefsrc?: string }[] | null;
      const first = routes?.[0];
      if (!first?.dev) return null;
      return { interface: first.dev, source: first.prefsrc ?? '' };
    },
  };
}
