// The SSE + POST transport, driven with fetch and the real `yjs` package,
// next to a stock y-websocket client on the same document.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as awarenessProtocol from 'y-protocols/awareness'
import { WebsocketProvider } from 'y-websocket'
import { YrelayProcess, waitFor } from './server.mjs'
import { openStream } from './sse.mjs'

const b64 = (bytes) => Buffer.from(bytes).toString('base64')
const unb64 = (text) => new Uint8Array(Buffer.from(text, 'base64'))

async function post (server, doc, what, body) {
  const response = await fetch(`${server.httpUrl}/v1/docs/${doc}/${what}`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream' },
    body
  })
  const text = await response.text()
  return { status: response.status, json: text ? JSON.parse(text) : null }
}

/** One local edit as a v1 update. */
function edit (doc, fn) {
  const before = Y.encodeStateVector(doc)
  fn(doc)
  return Y.encodeStateAsUpdate(doc, before)
}

test('a stream syncs, receives updates with cursors, and POSTs are acknowledged', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const writer = new Y.Doc()
  const first = await post(server, 'maps/settings', 'updates', edit(writer, d => d.getMap('m').set('zoom', 3)))
  assert.equal(first.status, 200)
  assert.match(first.json.cursor, /^\d+-\d+$/)
  assert.equal(typeof first.json.timestamp, 'number')

  const reader = new Y.Doc()
  const stream = await openStream(server, 'maps/settings', { sv: Y.encodeStateVector(reader) })
  t.after(() => stream.close())
  const sync = JSON.parse((await stream.next('sync')).data)
  Y.applyUpdate(reader, unb64(sync.update))
  assert.equal(reader.getMap('m').get('zoom'), 3)
  assert.ok(unb64(sync.stateVector).length > 0)

  const second = await post(server, 'maps/settings', 'updates', edit(writer, d => d.getMap('m').set('center', [1, 2])))
  const update = await stream.next('update')
  assert.equal(update.id, second.json.cursor)
  Y.applyUpdate(reader, unb64(update.data))
  assert.deepEqual(reader.getMap('m').toJSON(), writer.getMap('m').toJSON())

  // POST /sync: the diff against a state vector, and the server's state vector
  const synced = await post(server, 'maps/settings', 'sync', Y.encodeStateVector(new Y.Doc()))
  assert.equal(synced.status, 200)
  const fresh = new Y.Doc()
  Y.applyUpdate(fresh, unb64(synced.json.update))
  assert.deepEqual(fresh.getMap('m').toJSON(), writer.getMap('m').toJSON())
})

test('a y-websocket client and an SSE + POST client on one document converge', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const wsDoc = new Y.Doc()
  const provider = new WebsocketProvider(server.wsUrl, 'maps/shared', wsDoc, { WebSocketPolyfill: WebSocket, disableBc: true })
  t.after(() => { provider.destroy(); wsDoc.destroy() })
  await waitFor('ws sync', () => provider.synced, [[provider, 'sync']])

  const sseDoc = new Y.Doc()
  const stream = await openStream(server, 'maps/shared', { sv: Y.encodeStateVector(sseDoc) })
  t.after(() => stream.close())
  Y.applyUpdate(sseDoc, unb64(JSON.parse((await stream.next('sync')).data).update))

  wsDoc.getText('title').insert(0, 'from websocket ')
  Y.applyUpdate(sseDoc, unb64((await stream.next('update')).data))
  const ack = await post(server, 'maps/shared', 'updates', edit(sseDoc, d => d.getArray('layers').push(['roads'])))
  assert.equal(ack.status, 200)
  await waitFor('ws sees the POST', () => wsDoc.getArray('layers').length === 1, [[wsDoc, 'update']])
  assert.deepEqual(Y.encodeStateVector(wsDoc), Y.encodeStateVector(sseDoc))
  assert.equal(sseDoc.getText('title').toString(), 'from websocket ')

  // awareness over POST reaches the stream (and the websocket client)
  const aw = new awarenessProtocol.Awareness(sseDoc)
  t.after(() => aw.destroy())
  aw.setLocalState({ user: 'sse-client' })
  const posted = await post(server, 'maps/shared', 'awareness', awarenessProtocol.encodeAwarenessUpdate(aw, [sseDoc.clientID]))
  assert.equal(posted.status, 204)
  await stream.next('awareness')
  await waitFor('ws sees sse presence', () => provider.awareness.getStates().get(sseDoc.clientID)?.user === 'sse-client', [[provider.awareness, 'change']])
})

test('Last-Event-ID resumes exactly after the cursor', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const writer = new Y.Doc()
  const reader = new Y.Doc()
  // a live reader keeps the document (and its log window) loaded
  const keeper = await openStream(server, 'maps/resume')
  t.after(() => keeper.close())
  await keeper.next('sync')

  const stream = await openStream(server, 'maps/resume')
  await stream.next('sync')
  await post(server, 'maps/resume', 'updates', edit(writer, d => d.getText('t').insert(0, 'a')))
  const seen = await stream.next('update')
  Y.applyUpdate(reader, unb64(seen.data))
  stream.close()

  const missed = []
  for (const s of ['b', 'c']) {
    missed.push((await post(server, 'maps/resume', 'updates', edit(writer, d => d.getText('t').insert(d.getText('t').length, s)))).json.cursor)
  }
  const resumed = await openStream(server, 'maps/resume', { lastEventId: seen.id })
  t.after(() => resumed.close())
  const got = [await resumed.next('update'), await resumed.next('update')]
  assert.deepEqual(got.map(e => e.id), missed)
  assert.equal(resumed.events.filter(e => e.type === 'sync').length, 0, 'no full sync when the log has the cursor')
  for (const e of got) Y.applyUpdate(reader, unb64(e.data))
  assert.equal(reader.getText('t').toString(), 'abc')

  // a cursor the log no longer holds gets a fresh full sync
  const stale = await openStream(server, 'maps/resume', { lastEventId: '1-0' })
  t.after(() => stale.close())
  const full = new Y.Doc()
  Y.applyUpdate(full, unb64(JSON.parse((await stale.next('sync')).data).update))
  assert.equal(full.getText('t').toString(), 'abc')
})

test('bad input gets a JSON error and is never stored', async (t) => {
  const server = await new YrelayProcess(['--max-message-size', '1024']).start()
  t.after(() => server.dispose())
  const cases = [
    ['maps/bad', 'updates', new Uint8Array([5, 200, 1, 7]), 400, 'BAD_UPDATE'],
    ['maps/bad', 'updates', new Uint8Array(4096), 413, 'BODY_TOO_LARGE'],
    ['maps/bad', 'sync', new Uint8Array([200]), 400, 'BAD_STATE_VECTOR'],
    ['maps/bad', 'awareness', new Uint8Array([1, 2]), 400, 'BAD_AWARENESS'],
    ['maps/bad%20id', 'updates', new Uint8Array([0, 0]), 400, 'BAD_DOC_ID']
  ]
  for (const [doc, what, body, status, code] of cases) {
    const res = await post(server, doc, what, body)
    assert.equal(res.status, status, `${what} ${code}`)
    assert.equal(res.json.error.code, code)
    assert.ok(res.json.error.message.length > 0)
  }
  const badSv = await fetch(`${server.httpUrl}/v1/docs/maps/bad/events?sv=%%%`)
  assert.equal(badSv.status, 400)
  assert.equal((await badSv.json()).error.code, 'BAD_STATE_VECTOR')
  // nothing was stored: the document is still empty
  const synced = await post(server, 'maps/bad', 'sync', Y.encodeStateVector(new Y.Doc()))
  assert.deepEqual(Array.from(unb64(synced.json.update)), [0, 0])
})

test('browsers on a configured origin may call the API (CORS), over HTTP/1.1 and HTTP/2', async (t) => {
  const { request } = await import('node:http')
  const http2 = await import('node:http2')
  const server = await new YrelayProcess(['--cors-origins', 'https://app.example']).start()
  t.after(() => server.dispose())
  const preflight = (origin) => new Promise((resolve, reject) => {
    const req = request(`${server.httpUrl}/v1/docs/maps/cors/updates`, {
      method: 'OPTIONS',
      headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type,last-event-id' }
    }, (res) => { res.resume(); resolve(res.headers) })
    req.on('error', reject)
    req.end()
  })
  const allowed = await preflight('https://app.example')
  assert.equal(allowed['access-control-allow-origin'], 'https://app.example')
  assert.match(allowed['access-control-allow-headers'], /last-event-id/)
  const other = await preflight('https://elsewhere.example')
  assert.equal(other['access-control-allow-origin'], undefined)

  // Closed here, before the server is disposed (a reset session would throw).
  const session = http2.connect(server.httpUrl)
  const status = await new Promise((resolve, reject) => {
    session.on('error', reject)
    const req = session.request({ ':path': '/healthz' })
    req.on('response', (headers) => { req.resume(); resolve(headers[':status']) })
    req.on('error', reject)
    req.end()
  })
  await new Promise((resolve) => session.close(resolve))
  assert.equal(status, 200)
})
