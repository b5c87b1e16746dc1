// Renders the files the Debian package places outside its program tree from the same code `meshctl service
// install` uses (src/service/layout.ts, compiled into the staged tree): the units from systemd/ and the sysusers
// file with the package's paths (renderShipped with PACKAGED_LAYOUT), the default config, the launcher, and the
// marker that tells the installed meshctl that the package owns these files, and a manual page from `meshctl
// --help` (usr/share/man/man1/meshctl.1, uncompressed). Run by scripts/package-deb.sh:
//   node render-files.mjs STAGE_ROOT PROGRAM_DIR SHIPPED_SYSTEMD_DIR LAUNCHER
// STAGE_ROOT is the package's root, PROGRAM_DIR its staged /usr/lib/meshctl (with dist/ built). Prints the
// conffiles, one per line.
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';

const [stageRoot, programDir, systemdDir, launcher] = process.argv.slice(2);
if (!stageRoot || !programDir || !systemdDir || !launcher) {
  process.stderr.write('usage: node render-files.mjs STAGE_ROOT PROGRAM_DIR SHIPPED_SYSTEMD_DIR LAUNCHER\n');
  process.exit(2);
}
const layout = await import(pathToFileURL(join(programDir, 'dist/service/layout.js')).href);
const target = layout.PACKAGED_LAYOUT;

function put(path, text, mode = 0o644) {
  const file = join(stageRoot, path);
  mkdirSync(dirname(file), { recursive: true, mode: 0o755 });
  writeFileSync(file, text);
  chmodSync(file, mode);
}

for (const key of layout.UNIT_ORDER) {
  const unit = layout.UNITS[key];
  put(join(target.unitDir, unit), layout.renderShipped(readFileSync(join(systemdDir, unit), 'utf8'), target));
}
put(target.sysusersFile, layout.renderShipped(readFileSync(join(systemdDir, 'meshctl.sysusers.conf'), 'utf8'), target));
put(target.configFile, layout.renderShipped(layout.DEFAULT_CONFIG_TEXT, target));
put(target.binLink, readFileSync(launcher, 'utf8'), 0o755);
// PACKAGED_MARKER is computed from the staged module's own location, so it lands inside PROGRAM_DIR.
writeFileSync(layout.PACKAGED_MARKER, 'deb\n');

// The manual page: the top-level help, and where the package put things.
const meshctl = (...args) => execFileSync(process.execPath, [join(programDir, 'bin/meshctl'), ...args], { encoding: 'utf8' });
const roff = (text) => text.replace(/\\/g, '\\e').replace(/^([.'])/gm, '\\&$1').replace(/-/g, '\\-');
const date = new Date(Number(process.env.SOURCE_DATE_EPOCH ?? Date.now() / 1000) * 1000).toISOString().slice(0, 10);
const units = layout.UNIT_ORDER.map((k) => layout.UNITS[k]).join(', ');
put('usr/share/man/man1/meshctl.1', `.TH MESHCTL 1 "${date}" "meshctl ${meshctl('--version').trim()}" "meshctl"
.SH NAME
meshctl \\- transparent TCP interception for Linux hosts: netfilter capture plus a local proxy
.SH SYNOPSIS
.B meshctl
.I command
.RI [ options ]
.SH DESCRIPTION
Run \\fBmeshctl\\fR \\fIcommand\\fR \\fB\\-\\-help\\fR for each command's options.
.PP
.nf
${roff(meshctl('--help').trimEnd())}
.fi
.SH FILES
.TP
.I ${target.configFile}
The config (a conffile). After editing it, \\fBmeshctl service install\\fR applies it.
.TP
.I ${target.unitDir}
${roff(units)}: nothing is enabled or started on install; \\fBmeshctl service install\\fR does both.
.TP
.I /var/lib/meshctl
The capture ledger and rule snapshots (removed on purge).
.SH SEE ALSO
.BR iptables (8),
.BR nft (8),
.BR systemd.socket (5),
.IR /usr/share/doc/meshctl/README.md.gz
`);
process.stdout.write(`${target.configFile}\n`);
