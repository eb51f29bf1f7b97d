// Issue 12's findings with the real `yjs` and `y-websocket` packages: an
// edit made just before a tab closes is kept; nesting built with the normal
// yjs API is bounded and never brings the server down.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { YrelayProcess, waitFor } from './server.mjs'

function provider (server, room, doc = new Y.Doc()) {
  return new WebsocketProvider(server.wsUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
}

test('an edit made just before provider.destroy() (a closed tab) is kept', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  for (let i = 0; i < 10; i++) {
    const p = provider(server, 'tabs/doc')
    await waitFor('sync', () => p.synced, [[p, 'sync']])
    p.doc.getMap('m').set(`k${i}`, i)
    p.destroy()
    p.doc.destroy()
  }
  const fresh = provider(server, 'tabs/doc')
  t.after(() => { fresh.destroy(); fresh.doc.destroy() })
  const map = fresh.doc.getMap('m')
  await waitFor('all 10 edits', () => map.size === 10, [[fresh.doc, 'update']])
})

/** One update holding `depth` Y.Arrays nested in root array "a". */
function nested (depth) {
  const doc = new Y.Doc()
  doc.transact(() => {
    let array = doc.getArray('a')
    for (let i = 0; i < depth; i++) {
      const inner = new Y.Array()
      array.insert(0, [inner])
      array = inner
    }
  })
  return doc
}

test('Y.Arrays nested past 1,000 levels are refused; deleting 1,000 levels is fine', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const post = (doc, body) => fetch(`${server.httpUrl}/v1/docs/deep/${doc}/updates`, { method: 'POST', body })

  const tooDeep = await post('too', Y.encodeStateAsUpdate(nested(1001)))
  assert.equal(tooDeep.status, 400)
  assert.equal((await tooDeep.json()).error.code, 'BAD_UPDATE')

  const doc = nested(1000)
  assert.equal((await post('ok', Y.encodeStateAsUpdate(doc))).status, 200)
  const before = Y.encodeStateVector(doc)
  doc.getArray('a').delete(0, 1)
  assert.equal((await post('ok', Y.encodeStateAsUpdate(doc, before))).status, 200)
  const json = await fetch(`${server.httpUrl}/v1/docs/deep/ok/json`)
  assert.deepEqual(await json.json(), { a: [] })
  assert.equal((await fetch(`${server.httpUrl}/healthz`)).status, 200)
})
