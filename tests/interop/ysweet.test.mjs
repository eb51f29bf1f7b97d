// The y-sweet client (npm `@y-sweet/client`, unmodified) against yrelay's
// y-websocket endpoint: its sync-status messages (type 102) are answered
// once what it sent is durable, so it stays connected and `hasLocalChanges`
// means "saved".
import { test } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { createYjsProvider } from '@y-sweet/client'
import { WebsocketProvider } from 'y-websocket'
import { YrelayProcess, waitFor } from './server.mjs'

/** A WebSocket that counts what the provider opens and the sync statuses it hears. */
function countingSocket () {
  const counts = { opened: 0, statuses: 0, events: new (class extends EventTarget {
    on (ev, fn) { this.addEventListener(ev, fn) }
    off (ev, fn) { this.removeEventListener(ev, fn) }
  })() }
  class Counting extends WebSocket {
    constructor (url) {
      super(url)
      counts.opened++
      this.addEventListener('message', (event) => {
        if (new Uint8Array(event.data)[0] === 102) {
          counts.statuses++
          counts.events.dispatchEvent(new Event('status'))
        }
      })
    }
  }
  return { Counting, counts }
}

/** A y-sweet provider on `space/docId`, given its client token directly. */
function ysweet (server, space, docId, WebSocketPolyfill = WebSocket) {
  const doc = new Y.Doc()
  const clientToken = { url: `${server.wsUrl}/${space}`, baseUrl: `${server.httpUrl}/v1/docs/${space}`, docId }
  const provider = createYjsProvider(doc, docId, async () => clientToken, { WebSocketPolyfill, initialClientToken: clientToken })
  return { doc, provider }
}

const connected = (p) => waitFor('connected', () => p.status === 'connected', [[p, 'connection-status']])

test('y-sweet providers converge, hear their changes saved, and stay connected past heartbeats', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const { Counting, counts } = countingSocket()
  const a = ysweet(server, 'acme', 'notes', Counting)
  const b = ysweet(server, 'acme', 'notes')
  t.after(() => { a.provider.destroy(); b.provider.destroy() })
  await Promise.all([connected(a.provider), connected(b.provider)])

  a.doc.getText('body').insert(0, 'hello from a')
  assert.equal(a.provider.hasLocalChanges, true)
  await waitFor('a saved', () => !a.provider.hasLocalChanges, [[a.provider, 'local-changes']])
  b.doc.getMap('meta').set('by', 'b')
  await waitFor('b saved', () => !b.provider.hasLocalChanges, [[b.provider, 'local-changes']])
  const same = () => a.doc.getText('body').toString() === b.doc.getText('body').toString() &&
    a.doc.getMap('meta').get('by') === 'b' && b.doc.getText('body').toString() === 'hello from a'
  await waitFor('convergence', same, [[a.doc, 'update'], [b.doc, 'update']])

  // Idle, the provider sends a heartbeat (a sync status) every 2 s and
  // reconnects unless it is answered within 3 s: several answered, one socket.
  const heard = counts.statuses
  await waitFor('three heartbeats answered', () => counts.statuses >= heard + 3, [[counts.events, 'status']])
  assert.equal(counts.opened, 1, 'the provider never had to reconnect')
  assert.equal(a.provider.status, 'connected')
})

test('a y-sweet provider and a y-websocket provider share the document', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const a = ysweet(server, 'acme', 'shared')
  const ws = new WebsocketProvider(server.wsUrl, 'acme/shared', new Y.Doc(), { WebSocketPolyfill: WebSocket, disableBc: true })
  t.after(() => { a.provider.destroy(); ws.destroy() })
  await connected(a.provider)
  a.doc.getArray('items').push(['from y-sweet'])
  ws.doc.getArray('items').push(['from y-websocket'])
  const both = (doc) => doc.getArray('items').length === 2
  await waitFor('both items everywhere', () => both(a.doc) && both(ws.doc), [[a.doc, 'update'], [ws.doc, 'update']])
  await waitFor('saved', () => !a.provider.hasLocalChanges, [[a.provider, 'local-changes']])
})
