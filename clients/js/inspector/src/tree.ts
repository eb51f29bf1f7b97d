// A document's content (its JSON export) as a tree; the nodes that differ
// from the tree shown before are highlighted for a moment.

import { h } from './dom.js'

/** Children shown per map or array before "… n more". */
const SHOWN = 200

function kind (value: unknown): string {
  if (Array.isArray(value)) return `array · ${value.length}`
  if (value !== null && typeof value === 'object') return `map · ${Object.keys(value).length}`
  if (typeof value === 'string') return `text · ${value.length}`
  return value === null ? 'null' : typeof value
}

function same (a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b)
}

function node (key: string, value: unknown, before: unknown, known: boolean): HTMLLIElement {
  const changed = !known || (typeof value !== 'object' || value === null ? !same(value, before) : false)
  const item = h('li', { 'data-path-key': key, class: changed ? 'changed' : undefined },
    h('span', { class: 'key' }, key), ': ')
  if (value !== null && typeof value === 'object') {
    item.append(h('span', { class: 'type' }, kind(value)))
    const entries: Array<[string, unknown]> = Array.isArray(value) ? value.map((v, i) => [String(i), v]) : Object.entries(value)
    const previous = (before !== null && typeof before === 'object' ? before : {}) as Record<string, unknown>
    const list = h('ul')
    for (const [k, v] of entries.slice(0, SHOWN)) list.append(node(k, v, previous[k], known && k in previous))
    if (entries.length > SHOWN) list.append(h('li', { class: 'muted' }, `… ${entries.length - SHOWN} more`))
    item.append(list)
  } else {
    item.append(h('span', {}, JSON.stringify(value)), ' ', h('span', { class: 'type' }, kind(value)))
  }
  return item
}

/**
 * The tree of `root` (an object of root types), marking what differs from
 * `before`: for a moment (`fade`), or for good (a comparison).
 */
export function tree (root: Record<string, unknown>, before: Record<string, unknown> | null, fade = true): HTMLElement {
  const list = h('ul')
  const entries = Object.entries(root)
  if (entries.length === 0) return h('p', { class: 'muted' }, 'The document holds nothing.')
  // The first look marks nothing.
  const base = before ?? root
  for (const [k, v] of entries) list.append(node(k, v, base[k], k in base))
  const element = h('div', { class: 'tree' }, list)
  if (fade) setTimeout(() => element.querySelectorAll('.changed').forEach(e => e.classList.remove('changed')), 2500)
  return element
}
