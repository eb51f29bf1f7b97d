// One document: what the server holds (live), who is connected with what
// presence, how it changed, and the admin's actions on it.

import { type Connections, type DocMeta, ApiError, docPath, enc, events, get, getBytes, send } from './api.js'
import { bytes, clear, h, sparkline, when } from './dom.js'
import { type Dispose, failed } from './main.js'
import * as Y from 'yjs'
import { applyDiff, docTree } from './ytree.js'

interface Version { id: number, timestamp: number, label: string | null, editors: string[], size: number }
interface Change { timestamp: number, editor: string | null, bytes: number }

/** The update-rate chart's window and its buckets. */
const RATE_WINDOW_MS = 10 * 60 * 1000
const RATE_BUCKETS = 20

export async function documentView (main: HTMLElement, space: string, doc: string): Promise<Dispose> {
  const path = docPath(space, doc)
  const back = h('p', {}, h('a', { href: `#/s/${enc(space)}` }, `← ${space}`))
  let meta: DocMeta | null
  try {
    meta = await get<DocMeta>(path)
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 404) throw error
    meta = null
  }
  if (meta === null) {
    const trash = await get<DocMeta[]>(`/v1/spaces/${enc(space)}/trash`)
    const trashed = trash.find(d => d.doc === doc)
    clear(main, back, h('h1', {}, doc),
      trashed
        ? h('div', {}, h('p', {}, h('span', { class: 'tag bad' }, 'in the trash'), ` since ${when(trashed.deletedAt)}`),
          h('button', { onclick: () => act(() => send('POST', `${path}/undelete`)) }, 'Undelete'))
        : h('p', { class: 'muted' }, 'This document was never written.'))
    return () => {}
  }

  const header = h('div')
  const content = h('section', { 'aria-label': 'Content' })
  const people = h('section', { 'aria-label': 'Connections' })
  const rate = h('section', { 'aria-label': 'Update rate' })
  const history = h('section', { 'aria-label': 'History' })
  clear(main, back, header,
    h('div', { class: 'grid' },
      h('div', {}, h('h2', {}, 'Content'), content),
      h('div', {}, h('h2', {}, 'Connections and presence'), people, h('h2', {}, 'Updates, last 10 minutes'), rate)),
    h('h2', {}, 'History'), history)

  // The server's state, kept here as a Y.Doc: each look asks only for what
  // it misses since its state vector.
  const ydoc = new Y.Doc()
  let first = true
  async function refresh (): Promise<void> {
    try {
      const sv = base64url(Y.encodeStateVector(ydoc))
      const [m, diff] = await Promise.all([get<DocMeta>(path), getBytes(`${path}/update?sv=${sv}`)])
      drawHeader(header, space, m)
      const changed = applyDiff(ydoc, new Uint8Array(await diff.arrayBuffer()))
      clear(content, docTree(ydoc, first ? undefined : changed))
      first = false
    } catch (error) {
      if (error instanceof ApiError && (error.status === 404 || error.status === 410)) { location.reload(); return }
      failed(error)
    }
  }
  async function refreshPeople (): Promise<void> {
    try {
      drawPeople(people, await get<Connections>(`${path}/connections`))
      const changes = await get<Change[]>(`${path}/changes?from=${Date.now() - RATE_WINDOW_MS}`)
      drawRate(rate, changes)
    } catch (error) {
      failed(error)
    }
  }

  await refresh()
  await refreshPeople()
  void drawHistory(history, path, refresh)

  // Live: the space's events say when the document changed (at most once a
  // second per instance), so a second look follows each.
  const feed = events(`/v1/spaces/${enc(space)}/events`)
  let trailing: ReturnType<typeof setTimeout> | undefined
  const onEvent = (event: MessageEvent): void => {
    try {
      if (JSON.parse(event.data).doc !== doc) return
    } catch { return }
    void refresh()
    clearTimeout(trailing)
    trailing = setTimeout(() => { void refresh() }, 1200)
  }
  for (const name of ['doc.updated', 'doc.created', 'doc.renamed', 'doc.deleted']) feed.addEventListener(name, onEvent)
  const poll = setInterval(() => { void refreshPeople() }, 2000)
  return () => { feed.close(); clearTimeout(trailing); clearInterval(poll) }
}

function base64url (bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}

async function act (action: () => Promise<unknown>): Promise<void> {
  try {
    await action()
    location.reload()
  } catch (error) {
    failed(error)
  }
}

function download (name: string, blob: Blob): void {
  const a = h('a', { href: URL.createObjectURL(blob), download: name })
  a.click()
  setTimeout(() => URL.revokeObjectURL(a.href), 1000)
}

function drawHeader (header: HTMLElement, space: string, meta: DocMeta): void {
  const path = docPath(space, meta.doc)
  const rename = (): void => {
    const title = prompt('New title', meta.title ?? '')
    if (title !== null) void act(() => send('PATCH', path, { title }))
  }
  const block = (): void => { void act(() => send('PATCH', path, { blocked: !meta.blocked })) }
  const remove = (): void => {
    if (confirm(`Move ${meta.doc} to the trash? Its connections are closed; it can be undeleted.`)) void act(() => send('DELETE', path))
  }
  const exportJson = async (): Promise<void> => { download(`${meta.doc}.json`, await getBytes(`${path}/json`)) }
  const exportUpdate = async (): Promise<void> => { download(`${meta.doc}.yjs`, await getBytes(`${path}/update`)) }
  const importJson = (): void => {
    const input = h('input', { type: 'file', accept: 'application/json' })
    input.addEventListener('change', async () => {
      const file = input.files?.[0]
      if (!file) return
      const target = prompt('Import into which new document (id)?', `${meta.doc}-import`)
      if (!target) return
      const json: unknown = JSON.parse(await file.text())
      await act(() => send('POST', `${docPath(space, target)}/import`, json))
    })
    input.click()
  }
  clear(header,
    h('h1', {}, meta.title ? `${meta.title} (${meta.doc})` : meta.doc),
    h('div', { class: 'row' },
      meta.blocked ? h('span', { class: 'tag bad' }, 'blocked') : null,
      h('span', { class: 'muted' }, `${bytes(meta.size)} · changed ${when(meta.updatedAt)} · created ${when(meta.createdAt)}`)),
    h('div', { class: 'row' },
      h('button', { onclick: rename }, 'Rename'),
      h('button', { onclick: block }, meta.blocked ? 'Unblock' : 'Block'),
      h('button', { class: 'danger', onclick: remove }, 'Delete'),
      h('button', { onclick: () => { void exportJson() } }, 'Export JSON'),
      h('button', { onclick: () => { void exportUpdate() } }, 'Export update'),
      h('button', { onclick: importJson }, 'Import JSON…')))
}

function drawPeople (section: HTMLElement, view: Connections): void {
  if (!view.live) {
    clear(section, h('p', { class: 'muted' }, 'Nobody is connected on this instance (the document is not loaded here).'))
    return
  }
  const presenceOf = (client: number): unknown => view.presence.find(p => p.clientId === client)?.state
  const rows = view.connections.map(c => h('tr', { 'data-connection': c.id },
    h('td', {}, c.transport), h('td', {}, c.user ?? h('span', { class: 'muted' }, 'anonymous')),
    h('td', { class: 'wide' }, when(c.since)),
    h('td', {}, ...c.clients.map(id => h('pre', { 'data-client': id }, `${id}: ${JSON.stringify(presenceOf(id), null, 1)}`)))))
  // Other instances' connections show through the presence they introduced.
  const elsewhere = view.presence.filter(p => p.instance !== view.instance)
  const vector = Object.entries(view.stateVector).map(([client, clock]) => `${client}: ${clock}`).join('\n')
  clear(section,
    h('p', { class: 'muted' }, `${view.connections.length} connected to instance ${view.instance ?? ''}`),
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Transport'), h('th', {}, 'User'), h('th', { class: 'wide' }, 'Since'), h('th', {}, 'Presence'))), h('tbody', {}, ...rows)),
    elsewhere.length
      ? h('div', {}, h('h3', {}, 'Presence from other instances'),
        h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Instance'), h('th', {}, 'Connection'), h('th', {}, 'Presence'))),
          h('tbody', {}, ...elsewhere.map(p => h('tr', {}, h('td', {}, p.instance ?? 'none (REST)'), h('td', {}, p.connection ?? ''),
            h('td', {}, h('pre', { 'data-client': p.clientId }, `${p.clientId}: ${JSON.stringify(p.state, null, 1)}`)))))))
      : null,
    h('details', {}, h('summary', {}, 'State vector'), h('pre', {}, vector || '(empty)')))
}

function drawRate (section: HTMLElement, changes: Change[]): void {
  const now = Date.now()
  const width = RATE_WINDOW_MS / RATE_BUCKETS
  const counts = new Array<number>(RATE_BUCKETS).fill(0)
  for (const c of changes) {
    const i = Math.floor((c.timestamp - (now - RATE_WINDOW_MS)) / width)
    if (i >= 0 && i < RATE_BUCKETS) counts[i]++
  }
  const editors = [...new Set(changes.map(c => c.editor).filter(e => e))]
  clear(section, sparkline(counts, 'updates per 30 s'),
    h('p', { class: 'muted' }, `${changes.length} updates${editors.length ? ` by ${editors.join(', ')}` : ''}`))
}

async function drawHistory (section: HTMLElement, path: string, refresh: () => Promise<void>): Promise<void> {
  try {
    const versions = await get<Version[]>(`${path}/versions`)
    const restore = (body: { version: number } | { at: number }, what: string): void => {
      if (!confirm(`Restore the document to ${what}? The current state is kept as a version first.`)) return
      void send('POST', `${path}/restore`, body).then(async () => { await refresh(); await drawHistory(section, path, refresh) }, failed)
    }
    const rows = versions.map(v => h('tr', {},
      h('td', {}, when(v.timestamp)), h('td', {}, v.label ?? ''), h('td', { class: 'wide' }, v.editors.join(', ')),
      h('td', {}, bytes(v.size)), h('td', {}, h('button', { onclick: () => restore({ version: v.id }, `version ${v.id}`) }, 'Restore'))))
    const local = (ms: number): string => new Date(ms - new Date(ms).getTimezoneOffset() * 60000).toISOString().slice(0, 23)
    const from = h('input', { type: 'datetime-local', step: 0.001, value: local(Date.now() - 3600 * 1000), 'aria-label': 'First moment' })
    const to = h('input', { type: 'datetime-local', step: 0.001, value: local(Date.now()), 'aria-label': 'Second moment' })
    const sides = h('div', { class: 'side' })
    // A moment the history cannot show is said on its side.
    const at = async (ms: number): Promise<Uint8Array | string> => {
      try {
        return new Uint8Array(await (await getBytes(`${path}/update?at=${ms}`)).arrayBuffer())
      } catch (error) {
        if (error instanceof ApiError && !error.unauthorized) return error.message
        throw error
      }
    }
    // The later state holds the earlier one (history only grows), so what
    // the later adds to the earlier is exactly what differs.
    const compare = async (): Promise<void> => {
      try {
        const [a, b] = [new Date(from.value).getTime(), new Date(to.value).getTime()].sort((x, y) => x - y)
        const [earlier, later] = await Promise.all([at(a), at(b)])
        const left = new Y.Doc()
        const right = new Y.Doc()
        let changed
        if (typeof earlier !== 'string') {
          applyDiff(left, earlier)
          applyDiff(right, earlier)
        }
        if (typeof later !== 'string') changed = applyDiff(right, later)
        const draw = (state: Uint8Array | string, doc: Y.Doc, marks?: ReturnType<typeof applyDiff>): HTMLElement =>
          typeof state === 'string' ? h('p', { class: 'muted' }, state) : docTree(doc, typeof earlier === 'string' ? undefined : marks, false)
        clear(sides,
          h('div', {}, h('h3', {}, when(a)), draw(earlier, left)),
          h('div', {}, h('h3', {}, when(b), ' ', h('button', { onclick: () => restore({ at: b }, when(b)) }, 'Restore this')), draw(later, right, changed)))
      } catch (error) {
        failed(error)
      }
    }
    clear(section,
      versions.length
        ? h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Version'), h('th', {}, 'Label'), h('th', { class: 'wide' }, 'Editors'), h('th', {}, 'Size'), h('th', {}, ''))), h('tbody', {}, ...rows))
        : h('p', { class: 'muted' }, 'No versions yet.'),
      h('div', { class: 'row' }, 'Compare ', from, ' with ', to, h('button', { onclick: () => { void compare() } }, 'Compare')),
      sides)
  } catch (error) {
    failed(error)
  }
}
