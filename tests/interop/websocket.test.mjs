// Stock y-websocket clients (npm `y-websocket` + `yjs`) against yrelay.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { YrelayProcess, waitFor } from './server.mjs'

function provider (server, room, doc = new Y.Doc()) {
  return new WebsocketProvider(server.wsUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
}

/** Destroys providers and their docs (a doc's awareness timer would keep Node alive). */
function close (...providers) {
  for (const p of providers) {
    p.destroy()
    p.doc.destroy()
  }
}

const synced = (p) => waitFor('sync', () => p.synced, [[p, 'sync']])

/** The state in normal form (re-encoded through a fresh doc). */
function canonical (doc) {
  const fresh = new Y.Doc()
  Y.applyUpdate(fresh, Y.encodeStateAsUpdate(doc))
  return Buffer.from(Y.encodeStateAsUpdate(fresh))
}

/** Waits until both docs hold the same state, then compares bytes. */
async function converged (a, b) {
  const same = () => Buffer.compare(Y.encodeStateVector(a), Y.encodeStateVector(b)) === 0
  await waitFor('convergence', same, [[a, 'update'], [b, 'update']])
  assert.deepEqual(canonical(a), canonical(b))
}

test('two providers converge on Y.Map, Y.Text and Y.Array; a late joiner gets everything', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const a = provider(server, 'team/board')
  const b = provider(server, 'team/board')
  t.after(() => close(a, b))
  await Promise.all([synced(a), synced(b)])

  for (let i = 0; i < 30; i++) {
    const doc = (i % 2 ? a : b).doc
    doc.transact(() => {
      doc.getMap('settings').set(`zoom${i % 4}`, i)
      doc.getText('title').insert(0, `${i} `)
      doc.getArray('layers').push([{ color: `#${i}` }])
    })
  }
  await converged(a.doc, b.doc)
  assert.equal(a.doc.getArray('layers').length, 30)

  const late = provider(server, 'team/board')
  t.after(() => close(late))
  await synced(late)
  await converged(a.doc, late.doc)
})

test('awareness travels between providers and is removed when one leaves', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const a = provider(server, 'team/presence')
  const b = provider(server, 'team/presence')
  t.after(() => close(a, b))
  await Promise.all([synced(a), synced(b)])

  a.awareness.setLocalStateField('user', { name: 'ann', color: '#f00' })
  const seesAnn = () => b.awareness.getStates().get(a.doc.clientID)?.user?.name === 'ann'
  await waitFor('ann on b', seesAnn, [[b.awareness, 'change']])

  const c = provider(server, 'team/presence')
  t.after(() => close(c))
  await waitFor('ann on a joiner', () => c.awareness.getStates().get(a.doc.clientID)?.user?.name === 'ann', [[c.awareness, 'change']])

  a.destroy()
  await waitFor('ann removed on b', () => !b.awareness.getStates().has(a.doc.clientID), [[b.awareness, 'change']])
})

test('edits survive a server restart; providers reconnect and converge', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const a = provider(server, 'team/restart')
  const b = provider(server, 'team/restart')
  t.after(() => close(a, b))
  await Promise.all([synced(a), synced(b)])

  a.doc.getText('t').insert(0, 'before ')
  await converged(a.doc, b.doc)

  await server.stop()
  // edits while the server is down stay local, then sync
  a.doc.getText('t').insert(a.doc.getText('t').length, 'offline-a ')
  b.doc.getMap('m').set('offline-b', true)
  await server.start()

  await converged(a.doc, b.doc)
  assert.match(b.doc.getText('t').toString(), /before offline-a/)
  const c = provider(server, 'team/restart')
  t.after(() => close(c))
  await synced(c)
  await converged(a.doc, c.doc)
  assert.equal(c.doc.getMap('m').get('offline-b'), true)
})
