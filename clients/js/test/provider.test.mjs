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

test('seeding: many clients with the same seed create the document exactly once', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const settings = { center: { lat: 52.52, lng: 13.4 }, zoom: 11, layers: [{ name: 'roads', colour: '#d33' }, { name: 'parks', colour: '#3a3' }] }
  const seed = { json: settings, root: 'settings' }
  const providers = [1, 2, 3].map(() => sse(server, 'maps/seeded', { seed }))
  t.after(() => close(...providers))
  const seeded = providers.map((p) => new Promise((resolve) => p.once('seeded', resolve)))
  await Promise.all(providers.map(synced))
  const outcomes = await Promise.all(seeded)
  assert.equal(outcomes.filter((o) => o.created).length, 1, 'one client created it, the others found it')
  await converged(providers[0].doc, providers[1].doc)
  await converged(providers[0].doc, providers[2].doc)
  for (const p of providers) {
    assert.deepEqual(p.doc.getMap('settings').toJSON(), settings, 'the seed, once: no duplicated layers')
  }
  // The server's JSON export is the same document.
  const exported = await (await fetch(`${server.httpUrl}/v1/docs/maps/seeded/json`)).json()
  assert.deepEqual(exported, { settings })
})

test('a token rides on every request; a deleted document stops the provider', async (t) => {
  const server = await new YrelayProcess(['--jwt-secret', 'provider-secret']).start()
  t.after(() => server.dispose())
  const { execFileSync } = await import('node:child_process')
  const { yrelayBin } = await import('../../../tests/interop/server.mjs')
  const token = execFileSync(yrelayBin, ['token', '--sub', 'ann', '--space', 'maps', '--jwt-secret', 'provider-secret']).toString().trim()
  const a = sse(server, 'maps/private', { token, seed: { json: { zoom: 3 } } })
  t.after(() => close(a))
  await synced(a)
  assert.equal(a.doc.getMap('root').get('zoom'), 3)
  a.doc.getMap('root').set('zoom', 4)
  await waitFor('acknowledged', () => a.pending === 0, [[a, 'acknowledged']])
  const refused = await fetch(`${server.httpUrl}/v1/docs/maps/private/json`)
  assert.equal(refused.status, 401)
  const deleted = new Promise((resolve) => a.once('deleted', resolve))
  const del = await fetch(`${server.httpUrl}/v1/docs/maps/private`, { method: 'DELETE', headers: { authorization: `Bearer ${token}` } })
  assert.equal(del.status, 204)
  await deleted
  assert.equal(a.status, 'disconnected')
})
