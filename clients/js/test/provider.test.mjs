// SseProvider against a real yrelay process, next to stock y-websocket clients.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { SseProvider } from '../dist/index.js'
import { YrelayProcess, waitFor } from '../../../tests/interop/server.mjs'

function sse (server, room, options = {}) {
  return new SseProvider(server.httpUrl, room, new Y.Doc(), { broadcastChannel: false, maxBackoffMs: 200, ...options })
}

function close (...providers) {
  for (const p of providers) {
    p.destroy()
    p.doc.destroy()
  }
}

const synced = (p) => waitFor('sync', () => p.synced, [[p, 'sync']])

async function converged (a, b) {
  const same = () => Buffer.compare(Buffer.from(Y.encodeStateVector(a)), Buffer.from(Y.encodeStateVector(b))) === 0
  await waitFor('convergence', same, [[a, 'update'], [b, 'update']])
  const canonical = (doc) => {
    const fresh = new Y.Doc()
    Y.applyUpdate(fresh, Y.encodeStateAsUpdate(doc))
    return Buffer.from(Y.encodeStateAsUpdate(fresh))
  }
  assert.deepEqual(canonical(a), canonical(b))
}

test('two SseProviders converge on Y.Map, Y.Text and Y.Array, with awareness', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const a = sse(server, 'maps/one')
  const b = sse(server, 'maps/one')
  t.after(() => close(a, b))
  await Promise.all([synced(a), synced(b)])
  for (let i = 0; i < 20; i++) {
    const doc = (i % 2 ? a : b).doc
    doc.transact(() => {
      doc.getMap('settings').set('zoom', i)
      doc.getText('title').insert(0, `${i} `)
      doc.getArray('layers').push([`layer${i}`])
    })
  }
  await converged(a.doc, b.doc)
  await waitFor('acknowledged', () => a.pending === 0 && b.pending === 0, [[a, 'acknowledged'], [b, 'acknowledged']])

  a.awareness.setLocalStateField('user', { name: 'ann' })
  await waitFor('presence', () => b.awareness.getStates().get(a.doc.clientID)?.user?.name === 'ann', [[b.awareness, 'change']])
  a.destroy()
  await waitFor('removal', () => !b.awareness.getStates().has(a.doc.clientID), [[b.awareness, 'change']])
})

test('an SseProvider and a y-websocket client converge, including offline edits on both sides', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const s = sse(server, 'maps/mixed')
  const wsDoc = new Y.Doc()
  const w = new WebsocketProvider(server.wsUrl, 'maps/mixed', wsDoc, { WebSocketPolyfill: WebSocket, disableBc: true })
  t.after(() => { close(s); w.destroy(); wsDoc.destroy() })
  await Promise.all([synced(s), waitFor('ws sync', () => w.synced, [[w, 'sync']])])
  s.doc.getText('t').insert(0, 'sse ')
  wsDoc.getText('t').insert(0, 'ws ')
  await converged(s.doc, wsDoc)

  s.disconnect()
  s.doc.getMap('m').set('offline-sse', 1)
  wsDoc.getMap('m').set('online-ws', 2)
  s.connect()
  await converged(s.doc, wsDoc)
  assert.deepEqual(s.doc.getMap('m').toJSON(), { 'offline-sse': 1, 'online-ws': 2 })
})

test('POSTs that fail are retried until acknowledged; the stream resumes after the server returns', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const a = sse(server, 'maps/retry')
  const b = sse(server, 'maps/retry')
  t.after(() => close(a, b))
  await Promise.all([synced(a), synced(b)])
  a.doc.getText('t').insert(0, 'before ')
  await converged(a.doc, b.doc)

  await server.stop()
  for (const word of ['while ', 'the ', 'server ', 'was ', 'down ']) {
    a.doc.getText('t').insert(a.doc.getText('t').length, word)
  }
  assert.ok(a.pending > 0, 'edits wait in the outbox')
  await server.start()
  await waitFor('outbox drained', () => a.pending === 0, [[a, 'acknowledged']])
  await converged(a.doc, b.doc)
  assert.equal(b.doc.getText('t').toString(), 'before while the server was down ')
})
