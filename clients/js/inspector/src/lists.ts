// Spaces and a space's documents: searched, paged.

import { type DocMeta, type SpaceMeta, enc, get } from './api.js'
import { bytes, clear, h, when } from './dom.js'
import { type Dispose, failed } from './main.js'

const PAGE = 50

/** A searchable, paged table: `load(q, from)` gives a page, `row` draws an entry. */
function pagedTable<T> (
  container: HTMLElement,
  heading: HTMLElement[],
  load: (q: string, from: string) => Promise<{ entries: T[], next: string | null }>,
  row: (entry: T) => HTMLTableRowElement
): void {
  const search = h('input', { type: 'search', placeholder: 'Search', 'aria-label': 'Search' })
  const body = h('tbody')
  const more = h('button', { hidden: true }, 'More')
  const status = h('p', { class: 'muted' })
  let next: string | null = null
  let query = ''
  async function fill (from: string): Promise<void> {
    try {
      const page = await load(query, from)
      if (!from) body.replaceChildren()
      for (const entry of page.entries) body.append(row(entry))
      next = page.next
      more.hidden = next === null
      status.textContent = body.children.length === 0 ? 'Nothing found.' : `${body.children.length} shown`
    } catch (error) {
      failed(error)
    }
  }
  let timer: ReturnType<typeof setTimeout> | undefined
  search.addEventListener('input', () => {
    clearTimeout(timer)
    timer = setTimeout(() => { query = search.value.trim(); void fill('') }, 200)
  })
  more.addEventListener('click', () => { if (next !== null) void fill(next) })
  container.append(h('div', { class: 'row' }, search), h('table', {}, h('thead', {}, h('tr', {}, ...heading)), body), more, status)
  void fill('')
}

export async function spacesView (main: HTMLElement): Promise<Dispose> {
  clear(main, h('h1', {}, 'Spaces'))
  pagedTable<SpaceMeta>(main,
    [h('th', {}, 'Space'), h('th', {}, 'Documents'), h('th', { class: 'wide' }, 'Last change')],
    async (q, from) => {
      const page = await get<{ spaces: SpaceMeta[], next: string | null }>(`/v1/spaces?limit=${PAGE}&q=${enc(q)}&from=${enc(from)}`)
      return { entries: page.spaces, next: page.next }
    },
    s => h('tr', {}, h('td', {}, h('a', { href: `#/s/${enc(s.space)}` }, s.space)), h('td', {}, s.docs), h('td', { class: 'wide' }, when(s.updatedAt))))
  return () => {}
}

export async function spaceView (main: HTMLElement, space: string): Promise<Dispose> {
  clear(main, h('h1', {}, `Space ${space}`), h('p', {}, h('a', { href: '#/' }, '← Spaces'), ' · ', h('a', { href: `#/s/${enc(space)}`, 'data-trash': true, onclick: (e: Event) => { e.preventDefault(); void showTrash(main, space) } }, 'Trash')))
  pagedTable<DocMeta>(main,
    [h('th', {}, 'Document'), h('th', {}, 'Size'), h('th', { class: 'wide' }, 'Last change'), h('th', {}, 'Live'), h('th', {}, '')],
    async (q, from) => {
      const docs = await get<DocMeta[]>(`/v1/spaces/${enc(space)}/docs?limit=${PAGE}&q=${enc(q)}&from=${enc(from)}`)
      return { entries: docs, next: docs.length === PAGE ? docs[docs.length - 1].doc : null }
    },
    d => h('tr', {},
      h('td', {}, h('a', { href: `#/d/${enc(space)}/${enc(d.doc)}` }, d.doc), d.title ? h('div', { class: 'muted' }, d.title) : null),
      h('td', {}, bytes(d.size)),
      h('td', { class: 'wide' }, when(d.updatedAt)),
      h('td', {}, d.connections ? h('span', { class: 'tag' }, `${d.connections} connected`) : ''),
      h('td', {}, d.blocked ? h('span', { class: 'tag bad' }, 'blocked') : '')))
  return () => {}
}

async function showTrash (main: HTMLElement, space: string): Promise<void> {
  try {
    const docs = await get<DocMeta[]>(`/v1/spaces/${enc(space)}/trash`)
    const rows = docs.map(d => h('tr', {}, h('td', {}, h('a', { href: `#/d/${enc(space)}/${enc(d.doc)}` }, d.doc)), h('td', {}, when(d.deletedAt))))
    main.append(h('h2', {}, 'Trash'), docs.length
      ? h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Document'), h('th', {}, 'Deleted'))), h('tbody', {}, ...rows))
      : h('p', { class: 'muted' }, 'The trash is empty.'))
  } catch (error) {
    failed(error)
  }
}
