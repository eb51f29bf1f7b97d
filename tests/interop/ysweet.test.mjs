// The y-sweet client and SDK (npm `@y-sweet/client`, `@y-sweet/sdk`,
// unmodified) against yrelay: the SDK's DocumentManager on /v1/ysweet/{space},
// the client on the y-websocket endpoint: its sync-status messages (type 102) are answered
// once what it sent is durable, so it stays connected and `hasLocalChanges`
// means "saved".
import { test } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { createYjsProvider } from '@y-sweet/client'
import { DocumentManager } from '@y-sweet/sdk'
import { createHmac } from 'node:crypto'
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

const SECRET = 'ysweet-secret-0123456789'
const b64url = (x) => Buffer.from(JSON.stringify(x)).toString('base64url')
function sign (sub, access) {
  const head = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url({ sub, exp: Math.floor(Date.now() / 1000) + 3600, access })}`
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`
}
const manager = (server, token, space = 'acme') =>
  new DocumentManager(`ys://${token ? `${token}@` : ''}${server.httpUrl.replace(/^http:\/\//, '')}/v1/ysweet/${space}`)

test('the y-sweet SDK creates documents and mints client tokens that YSweetProvider connects with', async (t) => {
  const server = await new YrelayProcess(['--jwt-secret', SECRET]).start()
  t.after(() => server.dispose())
  const backend = manager(server, sign('backend', [{ space: 'acme', doc: '*', mode: 'rw' }]))
  assert.deepEqual(await backend.checkStore(), { ok: true })

  const token = await backend.getOrCreateDocAndToken('board', { userId: 'ann' })
  assert.equal(token.docId, 'board')
  assert.equal(token.authorization, 'full')
  const fresh = await backend.createDoc()
  assert.match(fresh.docId, /^[0-9a-f]{32}$/)

  // Two providers with minted tokens converge and see their changes saved.
  const open = (clientToken) => {
    const doc = new Y.Doc()
    const provider = createYjsProvider(doc, clientToken.docId, async () => clientToken, { WebSocketPolyfill: WebSocket, initialClientToken: clientToken })
    return { doc, provider }
  }
  const a = open(token)
  const b = open(await backend.getClientToken('board', { userId: 'bob' }))
  t.after(() => { a.provider.destroy(); b.provider.destroy() })
  await Promise.all([connected(a.provider), connected(b.provider)])
  a.doc.getMap('m').set('x', 1)
  await waitFor('b has it', () => b.doc.getMap('m').get('x') === 1, [[b.doc, 'update']])
  await waitFor('a saved', () => !a.provider.hasLocalChanges, [[a.provider, 'local-changes']])

  // as-update and update through the SDK.
  const state = await backend.getDocAsUpdate('board')
  const mirror = new Y.Doc()
  Y.applyUpdate(mirror, state)
  assert.equal(mirror.getMap('m').get('x'), 1)
  const edit = new Y.Doc()
  Y.applyUpdate(edit, state)
  const before = Y.encodeStateVector(edit)
  edit.getMap('m').set('y', 'from the backend')
  await backend.updateDoc('board', Y.encodeStateAsUpdate(edit, before))
  await waitFor('providers get the backend edit', () => a.doc.getMap('m').get('y') === 'from the backend', [[a.doc, 'update']])

  // A read-only client token: it reads, its changes are refused.
  const ro = open(await backend.getClientToken('board', { authorization: 'read-only' }))
  t.after(() => ro.provider.destroy())
  await connected(ro.provider)
  await waitFor('ro reads', () => ro.doc.getMap('m').get('y') === 'from the backend', [[ro.doc, 'update']])
  const conn = await backend.getDocConnection('board', { authorization: 'read-only' })
  await assert.rejects(conn.updateDoc(Y.encodeStateAsUpdate(edit)), /403|Forbidden/)

  // A server token without access to the space is refused.
  const stranger = manager(server, sign('eve', [{ space: 'other', doc: '*', mode: 'rw' }]))
  await assert.rejects(stranger.getOrCreateDocAndToken('board'), /403|Forbidden|Failed/)
  await assert.rejects(manager(server, null).createDoc('x'), /NoAuthProvided|401/)
  // A body of the wrong shape: 400 with a JSON error.
  const response = await fetch(`${server.httpUrl}/v1/ysweet/acme/doc/new`, {
    method: 'POST', body: '{"docId": 5}', headers: { authorization: `Bearer ${sign('backend', [{ space: 'acme', doc: '*', mode: 'rw' }])}` }
  })
  assert.equal(response.status, 400)
  assert.equal((await response.json()).error.code, 'BAD_JSON')
})
