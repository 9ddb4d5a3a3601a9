import { readFileSync } from 'node:fs';
import { relative } from 'node:path';

/** The parts of a V8 `.cpuprofile` this summary reads. */
interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }[];
  samples: number[];
  startTime: number;
  endTime: number;
}

/** A CPU profile of one load round, boiled down to CPU microseconds per request. */
export interface ProfileSummary {
  route: string;
  seconds: number;
  samples: number;
  requests: number;
  /** Share of samples in which the process was idle (waiting for I/O). */
  idle: number;
  /** Busy CPU microseconds per request, in all, by function (self time), by kind of code (self time), and inclusive for the library's functions. */
  microsPerRequest: number;
  self: Map<string, number>;
  kinds: Map<string, number>;
  library: Map<string, number>;
}

const root = process.cwd();

function location(url: string, line: number): string {
  if (!url) return '';
  const path = url.startsWith('file://') ? new URL(url).pathname : url;
  const short = path.includes('/node_modules/')
    ? path.slice(path.lastIndexOf('/node_modules/') + 14)
    : path.startsWith('/')
      ? relative(root, path)
      : path;
  return `${short}:${line + 1}`;
}

const EXPRESS = new Set(['express', 'router', 'body-parser', 'finalhandler', 'send', 'on-finished', 'qs', 'path-to-regexp', 'content-type', 'parseurl', 'etag', 'mime-types', 'type-is', 'fresh', 'debug', 'depd', 'vary']);

function kindOf(url: string, name: string): string {
  if (name === '(garbage collector)') return 'garbage collector';
  if (name === '(program)') return 'V8 / native (program)';
  if (url.includes('libs/api-token/src')) return 'api-token library';
  if (url.includes('/bench/') || url.includes('/apps/demo/') || url.includes('/test/app/')) return 'demo / bench app';
  const pkg = /\/node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)?.[1];
  if (pkg) {
    if (pkg.startsWith('@nestjs/')) return 'NestJS';
    if (EXPRESS.has(pkg)) return 'Express and its helpers';
    if (pkg === 'lru-cache' || pkg === 'ioredis') return pkg;
    return 'other packages';
  }
  return 'Node.js core and builtins';
}

/** Reads a `.cpuprofile` of a round that answered `requests` requests. */
export function summarizeProfile(path: string, route: string, requests: number): ProfileSummary {
  const profile = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const key = (id: number) => {
    const { functionName, url, lineNumber } = byId.get(id)!.callFrame;
    return `${functionName || '(anonymous)'} ${location(url, lineNumber)}`.trim();
  };
  const seconds = (profile.endTime - profile.startTime) / 1e6;
  const micros = (seconds * 1e6) / profile.samples.length / requests;
  const self = new Map<string, number>();
  const kinds = new Map<string, number>();
  const library = new Map<string, number>();
  let idle = 0;
  for (const id of profile.samples) {
    const { functionName, url } = byId.get(id)!.callFrame;
    if (functionName === '(idle)') {
      idle++;
      continue;
    }
    add(self, key(id), micros);
    add(kinds, kindOf(url, functionName), micros);
    const seen = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      if (!byId.get(at)!.callFrame.url.includes('libs/api-token/src')) continue;
      const name = key(at);
      if (!seen.has(name)) {
        seen.add(name);
        add(library, name, micros);
      }
    }
  }
  return {
    route,
    seconds,
    samples: profile.samples.length,
    requests,
    idle: idle / profile.samples.length,
    microsPerRequest: (profile.samples.length - idle) * micros,
    self,
    kinds,
    library,
  };
}

function add(map: Map<string, number>, key: string, value: number): void {
  map.set(key, (map.get(key) ?? 0) + value);
}
