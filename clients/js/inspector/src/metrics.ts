// The server's own metrics (Prometheus text at /metrics), read into
// numbers the instance view charts.

export interface Sample { name: string, labels: Record<string, string>, value: number }

export function parse (text: string): Sample[] {
  const samples: Sample[] = []
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/)
    if (!m) continue
    const labels: Record<string, string> = {}
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2]
    samples.push({ name: m[1], labels, value: Number(m[3]) })
  }
  return samples
}

/** The sum of `name`'s samples whose labels include `match`. */
export function sum (samples: Sample[], name: string, match: Record<string, string> = {}): number {
  return samples
    .filter(s => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((total, s) => total + s.value, 0)
}

/** Every value of label `label` among `name`'s samples. */
export function labelValues (samples: Sample[], name: string, label: string): string[] {
  return [...new Set(samples.filter(s => s.name === name && s.labels[label] !== undefined).map(s => s.labels[label]))].sort()
}

/** The `q` quantile (seconds) of histogram `name`: the upper bound of the bucket that holds it. */
export function quantile (samples: Sample[], name: string, q: number): number | null {
  const buckets = samples
    .filter(s => s.name === `${name}_bucket`)
    .map(s => ({ le: s.labels.le === '+Inf' ? Infinity : Number(s.labels.le), count: s.value }))
    .sort((a, b) => a.le - b.le)
  const total = buckets.length ? buckets[buckets.length - 1].count : 0
  if (!total) return null
  return buckets.find(b => b.count >= q * total)?.le ?? null
}
