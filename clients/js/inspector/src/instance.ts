// The instance this inspector talks to: its own metrics (/metrics) and
// readiness, charted while the view is open.

import { get, getText } from './api.js'
import { clear, h, sparkline } from './dom.js'
import { type Dispose, failed } from './main.js'
import { type Sample, labelValues, parse, quantile, sum } from './metrics.js'

const EVERY_MS = 2000
/** Points kept per chart (two minutes). */
const KEPT = 60

interface Card { title: string, value: (now: Sample[], before: Sample[] | null) => number | null, unit: string }

function rate (name: string, match: Record<string, string> = {}): Card['value'] {
  return (now, before) => before === null ? null : Math.max(0, sum(now, name, match) - sum(before, name, match)) / (EVERY_MS / 1000)
}

export async function instanceView (main: HTMLElement): Promise<Dispose> {
  const ready = h('p', { class: 'muted' })
  const cards = h('div', { class: 'cards' })
  clear(main, h('h1', {}, 'Instance'), ready, cards)
  const history = new Map<string, number[]>()
  let before: Sample[] | null = null

  async function sample (): Promise<void> {
    try {
      const now = parse(await getText('/metrics'))
      const readiness = await get<{ status: string, store: string, log: string }>('/readyz').catch(() => null)
      ready.textContent = readiness ? `ready · store ${readiness.store} · log ${readiness.log}` : 'not ready'
      const list: Card[] = [
        ...labelValues(now, 'yrelay_connections', 'transport').map(t => ({
          title: `connections · ${t}`, value: (s: Sample[]) => sum(s, 'yrelay_connections', { transport: t }), unit: ''
        })),
        { title: 'documents loaded', value: s => sum(s, 'yrelay_docs_loaded'), unit: '' },
        { title: 'updates / s', value: rate('yrelay_updates_total'), unit: '/s' },
        { title: 'ack p50', value: s => ms(quantile(s, 'yrelay_update_ack_seconds', 0.5)), unit: 'ms' },
        { title: 'ack p99', value: s => ms(quantile(s, 'yrelay_update_ack_seconds', 0.99)), unit: 'ms' },
        { title: 'store backlog (updates)', value: s => sum(s, 'yrelay_store_backlog_updates'), unit: '' },
        { title: 'compactions / s', value: rate('yrelay_compactions_total'), unit: '/s' },
        { title: 'webhook deliveries pending', value: s => sum(s, 'yrelay_webhook_deliveries_pending'), unit: '' },
        { title: 'webhook deliveries failed', value: s => sum(s, 'yrelay_webhook_deliveries_total', { outcome: 'failed' }), unit: '' },
        { title: 'rejected messages / s', value: rate('yrelay_rejected_messages_total'), unit: '/s' }
      ]
      cards.replaceChildren(...list.map(card => {
        const value = card.value(now, before)
        const points = history.get(card.title) ?? []
        if (value !== null) points.push(value)
        history.set(card.title, points.slice(-KEPT))
        return h('div', { class: 'card', 'data-card': card.title },
          h('div', { class: 'muted' }, card.title),
          h('div', { class: 'value' }, value === null ? '—' : `${round(value)}${card.unit ? ` ${card.unit}` : ''}`),
          sparkline(history.get(card.title) ?? [], card.title))
      }))
      before = now
    } catch (error) {
      failed(error)
    }
  }
  await sample()
  const timer = setInterval(() => { void sample() }, EVERY_MS)
  return () => clearInterval(timer)
}

function ms (seconds: number | null): number | null {
  return seconds === null || !Number.isFinite(seconds) ? null : seconds * 1000
}

function round (v: number): string {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2).replace(/\.?0+$/, '') || '0'
}
