// History with the real JavaScript Yjs stack: a document a y-websocket
// client built (text with formatting, nested maps, arrays, XML) is broken,
// then restored to a version; the y-websocket, SSE and Socket.IO clients on
// it all come back to the old content, as `yjs` itself reads it.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { YrelayProcess, waitFor } from './server.mjs'
import { openStream } from './sse.mjs'
import { unb64, ws, connect, call } from './sio.mjs'

/** What a user sees of the document, formatting included. */
const view = (doc) => ({
  settings: doc.getMap('settings').toJSON(),
  list: doc.getArray('list').toJSON(),
  text: doc.getText('text').toDelta(),
  xml: doc.getXmlFragment('xml').toString()
})

async function json (server, path, body) {
  const response = await fetch(`${server.httpUrl}${path}`, {
    method: body ? 'POST' : 'GET',
    headers: { 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined
  })
  return { status: response.status, body: await response.json() }
}

/** The server's copy, read by `yjs` from `GET .../update`. */
async function served (server) {
  const response = await fetch(`${server.httpUrl}/v1/docs/ws1/plan/update`)
  const doc = new Y.Doc()
  if (response.status === 200) Y.applyUpdate(doc, new Uint8Array(await response.arrayBuffer()))
  return doc
}

async function serverShows (server, expected) {
  const deadline = Date.now() + 20000
  for (;;) {
    const seen = view(await served(server))
    if (JSON.stringify(seen) === JSON.stringify(expected)) return
    if (Date.now() > deadline) assert.deepEqual(seen, expected, 'the server never showed it')
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

test('a restore brings back what a JavaScript client wrote, live on every transport', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())

  const author = new Y.Doc()
  const provider = new WebsocketProvider(server.wsUrl, 'ws1/plan', author, { WebSocketPolyfill: WebSocket, disableBc: true })
  t.after(() => { provider.destroy(); author.destroy() })
  await waitFor('y-websocket sync', () => provider.synced, [[provider, 'sync']])
  author.transact(() => {
    const settings = author.getMap('settings')
    settings.set('theme', 'dark')
    const inner = new Y.Map()
    settings.set('inner', inner)
    inner.set('n', 1)
    const list = author.getArray('list')
    const nested = new Y.Map()
    list.push(['a', nested])
    nested.set('k', 'v')
    const text = author.getText('text')
    text.insert(0, 'hello world')
    text.format(0, 5, { bold: true })
    const paragraph = new Y.XmlElement('paragraph')
    author.getXmlFragment('xml').insert(0, [paragraph])
    paragraph.insert(0, [new Y.XmlText('first')])
  })
  const good = view(author)
  await serverShows(server, good)
  const made = await json(server, '/v1/docs/ws1/plan/versions', { label: 'good' })
  assert.equal(made.status, 201, JSON.stringify(made.body))

  // An SSE + POST client and a Socket.IO (AFFiNE) client on the document.
  const sseDoc = new Y.Doc()
  const stream = await openStream(server, 'ws1/plan', { sv: Y.encodeStateVector(sseDoc) })
  t.after(() => stream.close())
  Y.applyUpdate(sseDoc, unb64(JSON.parse((await stream.next('sync')).data).update))
  const pumping = (async () => {
    for (;;) {
      const event = await stream.next('update', 60000).catch(() => null)
      if (!event) return
      Y.applyUpdate(sseDoc, unb64(event.data))
    }
  })()
  t.after(() => pumping)
  const socket = await connect(server)
  t.after(() => socket.close())
  await call(socket, 'space:join', { ...ws, clientVersion: '0.26.0' })
  const sioDoc = new Y.Doc()
  socket.on('space:broadcast-doc-updates', (e) => {
    if (e.docId === 'plan') for (const u of e.updates) Y.applyUpdate(sioDoc, unb64(u))
  })
  const loaded = await call(socket, 'space:load-doc', { ...ws, docId: 'plan' })
  Y.applyUpdate(sioDoc, unb64(loaded.data.missing))
  const everyone = [author, sseDoc, sioDoc]
  const allShow = (expected, what) => Promise.all(everyone.map((doc) =>
    waitFor(what, () => JSON.stringify(view(doc)) === JSON.stringify(expected), [[doc, 'update']])))
  await allShow(good, 'every client has the good state')

  // Broken: edits, deletions, a formatting change.
  author.transact(() => {
    const settings = author.getMap('settings')
    settings.set('theme', 'neon')
    settings.delete('inner')
    author.getArray('list').delete(0, 2)
    author.getArray('list').push(['z'])
    const text = author.getText('text')
    text.format(0, 5, { bold: null, italic: true })
    text.delete(5, 6)
    const xml = author.getXmlFragment('xml')
    xml.delete(0, 1)
    xml.insert(0, [new Y.XmlText('other')])
  })
  const broken = view(author)
  assert.notDeepEqual(broken, good)
  await allShow(broken, 'every client has the broken state')

  const restored = await json(server, '/v1/docs/ws1/plan/restore', { version: made.body.id })
  assert.equal(restored.status, 200, JSON.stringify(restored.body))
  await allShow(good, 'every client has the restored state')
  assert.deepEqual(view(author), good)
  assert.deepEqual(view(await served(server)), good)

  // The version itself, as `yjs` reads it.
  const version = await fetch(`${server.httpUrl}/v1/docs/ws1/plan/versions/${made.body.id}/update`)
  const old = new Y.Doc()
  Y.applyUpdate(old, new Uint8Array(await version.arrayBuffer()))
  assert.deepEqual(view(old), good)
})
