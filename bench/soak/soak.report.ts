import { CONNECTION_ERROR, type InvariantResult, NO_ANSWER, type SoakHistory } from './soak.checker';
import type { InstanceSample } from './soak.server';

/**
 * The soak's report: one self-contained HTML page (inline CSS and SVG, no script, nothing fetched)
 * with the run's figures over time, the faults shaded on every time axis, and the invariants.
 * It names tokens by their kind, number and id, never by the token.
 */

export interface ReportInput {
  history: SoakHistory;
  results: InvariantResult[];
  seed: number;
  command: string;
  samples: (InstanceSample & { instance: number; life: number })[];
  /** Anything else worth a line (machine, options). */
  notes: string[];
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#17becf', '#7f7f7f'];
const FAULT_COLORS: Record<string, string> = {
  'redis-kill': '#d62728',
  'redis-stop': '#ff7f0e',
  'redis-failover': '#e377c2',
  'pg-cut': '#1f77b4',
  'pg-terminate': '#17becf',
  'instance-kill': '#7f7f7f',
};

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const fmt = (n: number) => (Math.abs(n) >= 100 ? n.toFixed(0) : Math.abs(n) >= 10 ? n.toFixed(1) : n.toFixed(2));

export function percentile(sorted: number[], p: number): number {
  if (!sorted.length) return 0;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

interface Series {
  name: string;
  points: [number, number][];
}

/** A line chart over the run's time axis (seconds), faults shaded, in SVG. */
function chart(title: string, unit: string, series: Series[], h: SoakHistory, log = false): string {
  const width = 900;
  const height = 220;
  const left = 55;
  const right = 10;
  const top = 24;
  const bottom = 28;
  const t1 = (h.endedAt - h.startedAt) / 1000;
  const all = series.flatMap((s) => s.points.map((p) => p[1]));
  const yMaxRaw = Math.max(1e-9, ...all);
  const tr = (v: number) => (log ? Math.log10(Math.max(v, 0.1)) : v);
  const yMin = log ? tr(0.1) : 0;
  const yMax = log ? Math.ceil(tr(yMaxRaw)) : yMaxRaw * 1.05;
  const x = (t: number) => left + (t / t1) * (width - left - right);
  const y = (v: number) => top + (1 - (tr(v) - yMin) / (yMax - yMin || 1)) * (height - top - bottom);
  const parts: string[] = [`<svg viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" role="img"><title>${esc(title)}</title>`];
  for (const f of h.faults) {
    const x0 = x((f.start - h.startedAt) / 1000);
    const x1 = Math.max(x0 + 2, x((f.end - h.startedAt) / 1000));
    parts.push(`<rect x="${x0.toFixed(1)}" y="${top}" width="${(x1 - x0).toFixed(1)}" height="${height - top - bottom}" fill="${FAULT_COLORS[f.kind]}" opacity="0.18"><title>${esc(f.kind)} ${esc(f.detail ?? '')}</title></rect>`);
  }
  const ticks = log ? Array.from({ length: yMax - yMin + 1 }, (_, i) => 10 ** (yMin + i)) : [0, 0.25, 0.5, 0.75, 1].map((k) => (k * yMax));
  for (const v of ticks) {
    const yy = log ? y(v) : top + (1 - v / (yMax || 1)) * (height - top - bottom);
    parts.push(`<line x1="${left}" x2="${width - right}" y1="${yy.toFixed(1)}" y2="${yy.toFixed(1)}" stroke="#ddd"/><text x="${left - 4}" y="${(yy + 4).toFixed(1)}" text-anchor="end" font-size="10">${fmt(v)}</text>`);
  }
  const step = t1 > 1200 ? 300 : t1 > 300 ? 60 : 10;
  for (let t = 0; t <= t1; t += step) parts.push(`<text x="${x(t).toFixed(1)}" y="${height - 10}" text-anchor="middle" font-size="10">${t} s</text>`);
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map(([t, v], k) => `${k ? 'L' : 'M'}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join('');
    parts.push(`<path d="${d}" fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="1.3"/>`);
  });
  parts.push(`<text x="${left}" y="15" font-size="12" font-weight="bold">${esc(title)} (${esc(unit)})</text>`);
  let lx = left + 8 + title.length * 7 + unit.length * 6 + 20;
  series.forEach((s, i) => {
    parts.push(`<rect x="${lx}" y="7" width="10" height="3" fill="${COLORS[i % COLORS.length]}"/><text x="${lx + 13}" y="12" font-size="10">${esc(s.name)}</text>`);
    lx += 20 + s.name.length * 6;
  });
  parts.push('</svg>');
  return parts.join('');
}

export function renderReport(input: ReportInput): string {
  const { history: h, results } = input;
  const duration = (h.endedAt - h.startedAt) / 1000;
  const bucket = Math.max(1, Math.round(duration / 300));
  const buckets = Math.ceil(duration / bucket) + 1;
  const at = (t: number) => Math.min(buckets - 1, Math.max(0, Math.floor((t - h.startedAt) / 1000 / bucket)));
  const latencies: number[][] = Array.from({ length: buckets }, () => []);
  const statusNames = ['200', '401', '429', '503', 'other', 'no answer / conn. error'];
  const byStatus = statusNames.map(() => new Array<number>(buckets).fill(0));
  const totals = new Map<string, number>();
  const allLatencies: number[] = [];
  for (const r of h.requests) {
    const b = at(r.sent);
    const name = r.status === NO_ANSWER ? 'no answer' : r.status === CONNECTION_ERROR ? 'connection error' : String(r.status);
    totals.set(name, (totals.get(name) ?? 0) + 1);
    const k = r.status <= 0 ? 5 : r.status === 200 ? 0 : r.status === 401 ? 1 : r.status === 429 ? 2 : r.status === 503 ? 3 : 4;
    byStatus[k][b]++;
    if (r.status > 0) {
      latencies[b].push(r.done - r.sent);
      allLatencies.push(r.done - r.sent);
    }
  }
  for (const l of latencies) l.sort((a, b) => a - b);
  allLatencies.sort((a, b) => a - b);
  const mid = (i: number) => i * bucket + bucket / 2;
  const latencySeries: Series[] = [50, 95, 99].map((p) => ({ name: `p${p}`, points: latencies.flatMap((l, i) => (l.length ? [[mid(i), Math.max(0.1, percentile(l, p))] as [number, number]] : [])) }));
  latencySeries.push({ name: 'max', points: latencies.flatMap((l, i) => (l.length ? [[mid(i), l[l.length - 1]] as [number, number]] : [])) });
  const statusSeries: Series[] = statusNames.map((name, k) => ({ name, points: byStatus[k].map((n, i) => [mid(i), n / bucket] as [number, number]) }));
  const perInstance = (pick: (s: ReportInput['samples'][number], prev?: ReportInput['samples'][number]) => number | undefined, label: string) => {
    const series: Series[] = [];
    for (let i = 0; i < h.instances; i++) {
      const samples = input.samples.filter((s) => s.instance === i);
      const points: [number, number][] = [];
      samples.forEach((s, k) => {
        const prev = k && samples[k - 1].life === s.life ? samples[k - 1] : undefined;
        const v = pick(s, prev);
        if (v !== undefined) points.push([(s.t - h.startedAt) / 1000, v]);
      });
      series.push({ name: `${label} i${i}`, points });
    }
    return series;
  };
  const rate = (get: (s: InstanceSample) => number) => (s: InstanceSample, prev?: InstanceSample) => (prev ? (get(s) - get(prev)) / ((s.t - prev.t) / 1000) : undefined);
  const mb = 2 ** 20;
  const failed = results.filter((r) => !r.pass).length;
  const violations = results.reduce((s, r) => s + r.violations, 0);
  const faultRows = h.faults
    .map((f) => `<tr><td>+${((f.start - h.startedAt) / 1000).toFixed(1)} s</td><td><span class="dot" style="background:${FAULT_COLORS[f.kind]}"></span>${esc(f.kind)}</td><td>${((f.end - f.start) / 1000).toFixed(2)} s</td><td>${esc(f.detail ?? '')}</td></tr>`)
    .join('');
  const faultCounts = [...new Set(h.faults.map((f) => f.kind))].map((k) => `${k} ${h.faults.filter((f) => f.kind === k).length}`).join(', ');
  const invariantRows = results
    .map((r) => `<tr class="${r.pass ? 'pass' : 'fail'}"><td><b>${esc(r.name)}</b><br><small>${esc(r.statement)}</small></td><td>${r.checked}</td><td>${r.violations}</td><td>${r.pass ? 'pass' : 'FAIL'}</td><td><small>${esc(r.first ?? '')}${r.note ? `${r.first ? '<br>' : ''}${esc(r.note)}` : ''}</small></td></tr>`)
    .join('');
  const statusTotals = [...totals].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${esc(k)}: ${v}`).join(', ');
  const lat = [50, 90, 99, 99.9].map((p) => `p${p} ${percentile(allLatencies, p).toFixed(1)} ms`).join(', ') + `, max ${allLatencies.length ? allLatencies[allLatencies.length - 1] : 0} ms`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>api-token soak, seed ${input.seed}</title>
<style>body{font:14px/1.4 system-ui,sans-serif;margin:24px;max-width:960px;color:#222}table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
tr.fail td{background:#fde2e2}tr.pass td:nth-child(4){color:#17753a;font-weight:bold}tr.fail td:nth-child(4){color:#b00;font-weight:bold}.dot{display:inline-block;width:9px;height:9px;margin-right:4px;border-radius:2px}svg{display:block;margin:8px 0}</style></head>
<body><h1>api-token soak: ${failed ? `<span style="color:#b00">${violations} violations</span>` : '<span style="color:#17753a">no violations</span>'}</h1>
<p><code>${esc(input.command)}</code> — seed <b>${input.seed}</b>, started ${new Date(h.startedAt).toISOString()}, ${duration.toFixed(0)} s, ${h.instances} instances, rate limits ${h.rateLimitMode}.</p>
<p><b>${h.requests.length}</b> requests (${statusTotals}); latency ${lat}. <b>${h.faults.length}</b> faults (${faultCounts}). ${h.tokens.length} tokens created.</p>
${input.notes.map((n) => `<p>${esc(n)}</p>`).join('')}
<h2>Invariants</h2><table><tr><th>invariant</th><th>checked</th><th>violations</th><th>result</th><th>first violation / notes</th></tr>${invariantRows}</table>
<h2>Over time</h2><p>Faults shaded: ${Object.entries(FAULT_COLORS).map(([k, c]) => `<span class="dot" style="background:${c}"></span>${k}`).join(' ')}. Buckets of ${bucket} s.</p>
${chart('Latency', 'ms, log scale', latencySeries, h, true)}
${chart('Requests by status', 'per second', statusSeries, h)}
${chart('Memory', 'MB', [...perInstance((s) => s.rssBytes / mb, 'RSS'), ...perInstance((s) => s.heapBytes / mb, 'heap after GC')], h)}
${chart('Redis round trips', 'commands per second', perInstance(rate((s) => s.redisCommands), 'Redis'), h)}
${chart('PostgreSQL round trips', 'statements per second', perInstance(rate((s) => s.pgStatements), 'PG'), h)}
${chart('Event-loop delay', 'p99 per sample, ms; client: max per second', [...perInstance((s) => s.loopP99Ms, 'p99'), { name: 'client max', points: (h.clientStalls ?? []).map((c) => [(c.t - h.startedAt) / 1000, c.maxMs] as [number, number]) }], h)}
<h2>Faults</h2><table><tr><th>at</th><th>fault</th><th>held</th><th>detail</th></tr>${faultRows}</table>
</body></html>
`;
}
