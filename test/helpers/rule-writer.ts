// A concurrent netfilter writer for tests, like Docker, kube-proxy or fail2ban on a busy host: a loop inside a
// namespace that adds a nat and a filter rule every ~20 ms and deletes the ones it added two rounds earlier, with the
// backend's own tool (iptables-legacy / iptables-nft with -w, or nft). Every rule it writes carries the comment
// `writer:N`, so a test can tell its rules from the stable foreign ones and knows which of them the writer removed.
// foreignRules() reads a namespace's foreign rules (ours and the writer's left out) for the "nothing lost" check.
import { spawn, type ChildProcess } from 'node:child_process';
import type { Backend } from '../../src/config/types.js';
import { labEnv, rulesetOf, waitFor } from './netfilter-lab.js';

export interface RuleWriter {
  /** Rounds completed so far (each: 2 rules added, 2 older ones deleted). */
  rounds(): number;
  /** Commands of the writer that failed (its own tool's stderr), as the writer saw them. */
  errors(): readonly string[];
  /**
   * Writer rules (`writer:N` lines of foreignRules) that are in `before` but not in `after` and that the writer did not
   * delete itself (waiting, bounded, for the writer to report the deletions it is making right now). Empty = none lost.
   */
  lostWriterRules(before: readonly string[], after: readonly string[]): Promise<string[]>;
  /** Stops the loop (SIGTERM to its process group) and waits for it to exit. */
  stop(): Promise<void>;
}

export interface RuleWriterOptions {
  /** Pause between rounds; default 20 ms. */
  readonly intervalMs?: number;
}

/** The loop, as a bash script: prints `+N` after adding round N's rules, `-N` after deleting them, `E …` on a failure. */
function writerScript(backend: Backend, intervalMs: number): string {
  const pause = (intervalMs / 1000).toFixed(3);
  if (backend === 'nftables') {
    return `
set -u
nft -f - <<'EOF' || { echo "E setup failed"; exit 1; }
table ip writer {
  chain wout { type nat hook output priority 10; policy accept; }
  chain win { type filter hook input priority 10; policy accept; }
}
EOF
declare -A hout hin
i=0
while :; do
  i=$((i+1)); p=$((20000 + i % 20000))
  a=$(nft -a -e add rule ip writer wout tcp dport $p counter comment "\\"writer:$i\\"" 2>&1) || echo "E add out $i: $a"
  b=$(nft -a -e add rule ip writer win tcp dport $p accept comment "\\"writer:$i\\"" 2>&1) || echo "E add in $i: $b"
  hout[$i]=$(printf '%s' "$a" | sed -n 's/.*# handle \\([0-9]*\\).*/\\1/p')
  hin[$i]=$(printf '%s' "$b" | sed -n 's/.*# handle \\([0-9]*\\).*/\\1/p')
  echo "+$i"
  j=$((i-2))
  if [ $j -ge 1 ]; then
    ok=1
    [ -n "\${hout[$j]:-}" ] && { e=$(nft delete rule ip writer wout handle "\${hout[$j]}" 2>&1) || { ok=0; echo "E del out $j: $e"; }; }
    [ -n "\${hin[$j]:-}" ] && { e=$(nft delete rule ip writer win handle "\${hin[$j]}" 2>&1) || { ok=0; echo "E del in $j: $e"; }; }
    unset "hout[$j]" "hin[$j]"
    [ $ok = 1 ] && echo "-$j"
  fi
  sleep ${pause}
done
`;
  }
  const ipt = `iptables-${backend === 'iptables-legacy' ? 'legacy' : 'nft'}`;
  return `
set -u
i=0
while :; do
  i=$((i+1)); p=$((20000 + i % 20000))
  e=$(${ipt} -w -t nat -A OUTPUT -p tcp --dport $p -m comment --comment "writer:$i" -j RETURN 2>&1) || echo "E add nat $i: $e"
  e=$(${ipt} -w -t filter -I INPUT 1 -p tcp --dport $p -m comment --comment "writer:$i" -j ACCEPT 2>&1) || echo "E add filter $i: $e"
  echo "+$i"
  j=$((i-2))
  if [ $j -ge 1 ]; then
    q=$((20000 + j % 20000)); ok=1
    e=$(${ipt} -w -t nat -D OUTPUT -p tcp --dport $q -m comment --comment "writer:$j" -j RETURN 2>&1) || { ok=0; echo "E del nat $j: $e"; }
    e=$(${ipt} -w -t filter -D INPUT -p tcp --dport $q -m comment --comment "writer:$j" -j ACCEPT 2>&1) || { ok=0; echo "E del filter $j: $e"; }
    [ $ok = 1 ] && echo "-$j"
  fi
  sleep ${pause}
done
`;
}

/** Starts the writer in `ns` (with labEnv, so it shares the tests' xtables lock file with meshctl). */
export function startRuleWriter(ns: string, backend: Backend, options: RuleWriterOptions = {}): RuleWriter {
  const child: ChildProcess = spawn(
    'ip',
    ['netns', 'exec', ns, 'bash', '-c', writerScript(backend, options.intervalMs ?? 20)],
    {
      env: labEnv,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let rounds = 0;
  const deleted = new Set<number>();
  const errors: string[] = [];
  let partial = '';
  let exited = false;
  const exit = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      resolve();
    }),
  );
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      if (line.startsWith('+')) rounds = Number(line.slice(1));
      else if (line.startsWith('-')) deleted.add(Number(line.slice(1)));
      else if (line.trim() !== '') errors.push(line);
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) =>
    errors.push(
      ...chunk
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => `stderr: ${l}`),
    ),
  );

  const idOf = (line: string): number | null => {
    const m = /writer:(\d+)/.exec(line);
    return m ? Number(m[1]) : null;
  };

  return {
    rounds: () => rounds,
    errors: () => errors,
    async lostWriterRules(before, after) {
      const now = new Set(after);
      const missing = before.filter((l) => idOf(l) !== null && !now.has(l));
      const ids = [...new Set(missing.map((l) => idOf(l)!))];
      // The writer deletes round N at round N+2 and reports it right after: wait for those reports (bounded).
      await waitFor(
        () => exited || ids.every((id) => deleted.has(id)),
        5000,
        () => `the writer to report deleting rounds ${ids.filter((id) => !deleted.has(id)).join(', ')}`,
      ).catch(() => undefined);
      return missing.filter((l) => !deleted.has(idOf(l)!));
    },
    async stop() {
      if (!exited) {
        try {
          process.kill(-child.pid!, 'SIGTERM');
        } catch {
          // already gone
        }
      }
      await exit;
    },
  };
}

/**
 * The namespace's foreign rules, one line each with where it is (`ipv4 nat -A DOCKER …`, `table ip x > chain y >
 * rule`): rules and user chains for the iptables backends, everything outside `table inet meshctl` for nftables.
 * meshctl's own objects are left out; the writer's rules are kept (they carry `writer:N`).
 */
export function foreignRules(ns: string, backend: Backend): string[] {
  const text = rulesetOf(ns, backend);
  const out: string[] = [];
  if (backend === 'nftables') {
    const stack: string[] = [];
    for (const raw of text.split('\n')) {
      const line = raw.trim().replace(/\s+/g, ' ');
      if (line === '') continue;
      if (line === '}') stack.pop();
      else if (line.endsWith('{')) {
        stack.push(line.slice(0, -2).trim());
        out.push(stack.join(' > '));
      } else out.push([...stack, line].join(' > '));
    }
    return out.filter((l) => !l.startsWith('table inet meshctl'));
  }
  let family = '';
  let table = '';
  for (const line of text.split('\n')) {
    if (line.startsWith('## ')) family = line.slice(3);
    else if (line.startsWith('*')) table = line.slice(1);
    else if (line.startsWith('-A ') || (line.startsWith(':') && / -$/.test(line)))
      out.push(`${family} ${table} ${line}`);
  }
  return out.filter((l) => !/MESHCTL|meshctl:/.test(l));
}

/** Stable foreign rules (not the writer's) in `before` that are missing from `after`. */
export function lostStableRules(before: readonly string[], after: readonly string[]): string[] {
  const now = new Set(after);
  return before.filter((l) => !/writer:\d+/.test(l) && !now.has(l));
}
