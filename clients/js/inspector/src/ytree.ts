// A document's content as the server holds it: its Yjs state, applied to a
// Y.Doc here and drawn by type (maps, arrays, text, XML). Kept up to date
// with the diffs since its state vector; the types each diff touched are
// highlighted for a moment.

import * as Y from 'yjs'
import { h } from './dom.js'

/** Children shown per type before "… n more". */
const SHOWN = 200

/** The types a diff changed, each with its changed keys (`null`: its content). */
type Changed = Map<Y.AbstractType<any>, Set<string | null>>

/**
 * What a root type is: the server does not know (an update names a root
 * only), so it is read off its content, as an app's `doc.getX(name)` would
 * define it.
 */
function typed (doc: Y.Doc, name: string): Y.AbstractType<any> {
  const root = doc.share.get(name) as Y.AbstractType<any>
  if (root.constructor !== Y.AbstractType) return root
  if (root._start === null) return doc.getMap(name)
  let xml = false
  for (let item: Y.Item | null = root._start; item !== null; item = item.right) {
    const content = item.content
    if (content instanceof Y.ContentString || content instanceof Y.ContentFormat) return doc.getText(name)
    if (content instanceof Y.ContentType && (content.type instanceof Y.XmlElement || content.type instanceof Y.XmlText)) xml = true
  }
  return xml ? doc.getXmlFragment(name) : doc.getArray(name)
}

function label (type: Y.AbstractType<any>): string {
  if (type instanceof Y.Map) return `map · ${type.size}`
  if (type instanceof Y.Array) return `array · ${type.length}`
  if (type instanceof Y.XmlText) return `xml text · ${type.length}`
  if (type instanceof Y.Text) return `text · ${type.length}`
  if (type instanceof Y.XmlElement) return `xml element · ${type.length}`
  if (type instanceof Y.XmlFragment) return `xml fragment · ${type.length}`
  return 'type'
}

function value (v: unknown, changed: Changed): Node {
  if (v instanceof Y.AbstractType) return typeNode(v, changed)
  if (v instanceof Uint8Array) return h('span', {}, `binary · ${v.length} bytes`)
  return h('span', {}, JSON.stringify(v) ?? 'undefined')
}

function entry (key: string, v: unknown, changed: Changed, keyChanged: boolean): HTMLLIElement {
  const mark = keyChanged || (v instanceof Y.AbstractType && (changed.get(v)?.has(null) ?? false))
  return h('li', { 'data-path-key': key, class: mark ? 'changed' : undefined }, h('span', { class: 'key' }, key), ': ', value(v, changed))
}

function children (pairs: Array<[string, unknown]>, changed: Changed, keys: Set<string | null> | undefined): HTMLUListElement {
  const list = h('ul')
  for (const [k, v] of pairs.slice(0, SHOWN)) list.append(entry(k, v, changed, keys?.has(k) ?? false))
  if (pairs.length > SHOWN) list.append(h('li', { class: 'muted' }, `… ${pairs.length - SHOWN} more`))
  return list
}

function typeNode (type: Y.AbstractType<any>, changed: Changed): HTMLElement {
  const keys = changed.get(type)
  const head = h('span', { class: 'type' }, label(type))
  if (type instanceof Y.Map) {
    const pairs = [...type.entries()].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)
    return h('span', {}, head, children(pairs, changed, keys))
  }
  if (type instanceof Y.Array) return h('span', {}, head, children(type.toArray().map((v, i) => [String(i), v]), changed, undefined))
  if (type instanceof Y.Text) return h('span', {}, h('span', { 'data-text': true }, JSON.stringify(type.toString())), ' ', head)
  if (type instanceof Y.XmlElement || type instanceof Y.XmlFragment) {
    const attributes = type instanceof Y.XmlElement ? Object.entries(type.getAttributes()).map(([k, v]) => ` ${k}=${JSON.stringify(v)}`).join('') : ''
    const name = type instanceof Y.XmlElement ? h('span', { class: 'key' }, `<${type.nodeName}${attributes}>`) : null
    return h('span', {}, name, ' ', head, children(type.toArray().map((v, i) => [String(i), v]), changed, undefined))
  }
  return head
}

/** Gives each root type its kind (see `typed`). */
function typeRoots (doc: Y.Doc): Array<readonly [string, Y.AbstractType<any>]> {
  return [...doc.share.keys()].sort().map(name => [name, typed(doc, name)] as const)
}

/**
 * The tree of `doc`'s root types; `changed`: what the last diff touched,
 * marked for a moment (`fade`) or for good (a comparison).
 */
export function docTree (doc: Y.Doc, changed: Changed = new Map(), fade = true): HTMLElement {
  const roots = typeRoots(doc).filter(([, type]) => type._start !== null || type._map.size > 0)
  if (roots.length === 0) return h('p', { class: 'muted' }, 'The document holds nothing.')
  const list = h('ul')
  for (const [name, type] of roots) list.append(entry(name, type, changed, false))
  const element = h('div', { class: 'tree' }, list)
  if (fade) setTimeout(() => element.querySelectorAll('.changed').forEach(e => e.classList.remove('changed')), 2500)
  return element
}

/** Applies `update` to `doc`; the types it changed (and those around them). */
export function applyDiff (doc: Y.Doc, update: Uint8Array): Changed {
  // Typed first, so the changes are recorded on the types that are drawn.
  typeRoots(doc)
  const changed: Changed = new Map()
  const record = (transaction: Y.Transaction): void => {
    for (const [type, keys] of transaction.changed) {
      const known = changed.get(type) ?? new Set()
      for (const key of keys) known.add(key)
      changed.set(type, known)
    }
  }
  doc.on('afterTransaction', record)
  Y.applyUpdate(doc, update)
  doc.off('afterTransaction', record)
  return changed
}
