// Builds libs/api-token and writes its npm tarball to .tmp/pack/; the last line printed is the tarball's path.
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const lib = join(root, 'libs', 'api-token');
const destination = join(root, '.tmp', 'pack');
const run = (command, args, cwd) => execFileSync(command, args, { cwd, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });

rmSync(join(lib, 'dist'), { recursive: true, force: true });
run(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(lib, 'tsconfig.lib.json')], root);
// The package ships its own README, libs/api-token/README.md (install and use), not the repository's.
mkdirSync(destination, { recursive: true });
const [packed] = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', destination], lib));
process.stdout.write(`${packed.name}@${packed.version}: ${packed.entryCount} files, ${packed.size} bytes packed\n`);
process.stdout.write(`${join(destination, packed.filename)}\n`);
