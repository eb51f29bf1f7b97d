// Stock Hocuspocus providers (npm `@hocuspocus/provider` 4.x and 3.x,
// unmodified) against yrelay's `/v1/hocuspocus` endpoint.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { WebsocketProvider } from 'y-websocket'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'
import { HocuspocusProvider as HocuspocusProvider3 } from 'hocuspocus-provider-3'
import { join } from 'node:path'
import { EventEmitter } from 'node:events'
import { YrelayProcess, RedisProcess, waitFor } from './server.mjs'

const SECRET = 'hocuspocus-secret-0123456789'
const b64url = (x) => Buffer.from(JSON.stringify(x)).toString('base64url')
function token (sub, access, ttl = 3600) {
  const head = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url({ sub, exp: Math.floor(Date.now() / 1000) + ttl, access })}`
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`
}

const hocuspocusUrl = (server) => `${server.wsUrl.replace(/\/v1\/ws$/, '')}/v1/hocuspocus`

function hocuspocus (server, name, options = {}, Provider = HocuspocusProvider) {
  const document = new Y.Doc()
  return new Provider({ url: hocuspocusUrl(server), name, document, WebSocketPolyfill: WebSocket, ...options })
}

function close (...providers) {
  for (const p of providers) {
    p.destroy()
    p.document?.destroy()
    p.doc?.destroy()
  }
}

const synced = (p) => waitFor('synced', () => p.isSynced ?? p.synced, [[p, 'synced']])
const saved = (p) => waitFor('saved', () => p.unsyncedChanges === 0, [[p, 'unsyncedChanges']])

test('4.x and 3.x providers, y-websocket and SSE clients converge; every change is reported saved', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const four = hocuspocus(server, 'acme/notes')
  const three = hocuspocus(server, 'acme/notes', {}, HocuspocusProvider3)
  const ws = new WebsocketProvider(server.wsUrl, 'acme/notes', new Y.Doc(), { WebSocketPolyfill: WebSocket, disableBc: true })
  t.after(() => close(four, three, ws))
  await Promise.all([synced(four), synced(three), waitFor('ws sync', () => ws.synced, [[ws, 'sync']])])
  assert.equal(four.authorizedScope, 'read-write')

  for (let i = 0; i < 20; i++) {
    const doc = [four.document, three.document, ws.doc][i % 3]
    doc.getArray('items').push([i])
    doc.getText('body').insert(0, `${i} `)
  }
  // Each round is two updates (the item, then the text): both must be in.
  const all = (doc) => doc.getArray('items').length === 20 && doc.getText('body').toString().split(' ').length === 21
  await waitFor('convergence', () => all(four.document) && all(three.document) && all(ws.doc),
    [[four.document, 'update'], [three.document, 'update'], [ws.doc, 'update']])
  assert.equal(four.document.getText('body').toString(), ws.doc.getText('body').toString())
  assert.equal(three.document.getText('body').toString(), ws.doc.getText('body').toString())
  await Promise.all([saved(four), saved(three)])

  // The SSE + POST transport on the same document: an event stream hears a
  // Hocuspocus edit, and a POSTed update reaches the Hocuspocus providers.
  const controller = new AbortController()
  t.after(() => controller.abort())
  const events = await fetch(`${server.httpUrl}/v1/docs/acme/notes/events`, { signal: controller.signal })
  const mirror = new Y.Doc()
  const heard = (async () => {
    const reader = events.body.getReader()
    let text = ''
    for (;;) {
      const { value, done } = await reader.read()
      if (done) throw new Error('the event stream ended')
      text += new TextDecoder().decode(value)
      for (const [, data] of text.matchAll(/event: ?(?:sync|update)\ndata: ?(.*)/g)) {
        const payload = data.startsWith('{') ? JSON.parse(data).update : data
        Y.applyUpdate(mirror, new Uint8Array(Buffer.from(payload, 'base64')))
      }
      if (mirror.getMap('via').get('hocuspocus') === true) return
    }
  })()
  four.document.getMap('via').set('hocuspocus', true)
  await heard
  const post = new Y.Doc()
  Y.applyUpdate(post, Y.encodeStateAsUpdate(ws.doc))
  const sv = Y.encodeStateVector(post)
  post.getMap('via').set('post', true)
  const posted = await fetch(`${server.httpUrl}/v1/docs/acme/notes/updates`, { method: 'POST', body: Y.encodeStateAsUpdate(post, sv) })
  assert.equal(posted.status, 200)
  await waitFor('the POST reaches Hocuspocus providers', () => four.document.getMap('via').get('post') === true &&
    three.document.getMap('via').get('post') === true, [[four.document, 'update'], [three.document, 'update']])

  // What they wrote is stored: a fresh client, after a restart, has it.
  await server.restart()
  const late = new WebsocketProvider(server.wsUrl, 'acme/notes', new Y.Doc(), { WebSocketPolyfill: WebSocket, disableBc: true })
  t.after(() => close(late))
  await waitFor('late sync', () => late.synced && all(late.doc), [[late, 'sync'], [late.doc, 'update']])
})

test('awareness reaches y-websocket clients and back', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const hp = hocuspocus(server, 'acme/room')
  const ws = new WebsocketProvider(server.wsUrl, 'acme/room', new Y.Doc(), { WebSocketPolyfill: WebSocket, disableBc: true })
  t.after(() => close(hp, ws))
  await synced(hp)
  hp.setAwarenessField('user', { name: 'hp' })
  ws.awareness.setLocalStateField('user', { name: 'ws' })
  const names = (awareness) => [...awareness.getStates().values()].map((s) => s.user?.name).sort().join()
  await waitFor('presence both ways', () => names(hp.awareness) === 'hp,ws' && names(ws.awareness) === 'hp,ws',
    [[hp.awareness, 'change'], [ws.awareness, 'change']])
})

test('many documents over one socket, each authorized on its own; names map to addresses', async (t) => {
  const server = await new YrelayProcess(['--jwt-secret', SECRET]).start()
  t.after(() => server.dispose())
  const socket = new HocuspocusProviderWebsocket({ url: hocuspocusUrl(server), WebSocketPolyfill: WebSocket })
  const tok = token('ann', [{ space: 'acme', doc: '*', mode: 'rw' }, { space: 'hocuspocus', doc: '*', mode: 'rw' },
    { space: 'docs', doc: 'readme', mode: 'ro' }])
  // A provider on a shared socket is attached by the app.
  const open = (name, options = {}) => {
    const p = new HocuspocusProvider({ websocketProvider: socket, name, document: new Y.Doc(), token: tok, ...options })
    p.attach()
    return p
  }
  const a = open('acme/a')
  const plain = open('plain') // no space: --hocuspocus-space (hocuspocus/plain)
  const ro = open('docs/readme')
  const denied = open('secret/x')
  const unmappable = open('no/such/name')
  const forged = open('acme/forged', { token: 'not-a-jwt' })
  // 4.x session awareness: two providers of one document on one socket.
  const s1 = open('acme/a', { sessionAwareness: true })
  const s2 = open('acme/a', { sessionAwareness: true })
  t.after(() => { close(a, plain, ro, denied, unmappable, forged, s1, s2); socket.destroy() })

  const failed = (p) => new Promise((resolve) => p.on('authenticationFailed', ({ reason }) => resolve(reason)))
  const [deniedReason, unmappableReason, forgedReason] = await Promise.all([failed(denied), failed(unmappable), failed(forged)])
  assert.match(deniedReason, /no access to secret\/x/)
  assert.match(unmappableReason, /cannot be mapped/)
  assert.match(forgedReason, /not valid/)
  await Promise.all([synced(a), synced(plain), synced(ro), synced(s1), synced(s2)])
  assert.equal(ro.authorizedScope, 'readonly')
  assert.equal(a.authorizedScope, 'read-write')

  a.document.getMap('m').set('k', 'a')
  plain.document.getMap('m').set('k', 'plain')
  await Promise.all([saved(a), saved(plain)])
  const seen = (p) => p.document.getMap('m').get('k') === 'a'
  await waitFor('each session has it', () => seen(s1) && seen(s2), [[s1.document, 'update'], [s2.document, 'update']])
  s1.document.getMap('m').set('s', 1)
  await waitFor('session to session', () => s2.document.getMap('m').get('s') === 1 && a.document.getMap('m').get('s') === 1,
    [[s2.document, 'update'], [a.document, 'update']])
  // A read-only document's change is not saved, and nobody else sees it.
  ro.document.getMap('m').set('k', 'nope')
  const reader = new WebsocketProvider(server.wsUrl, 'hocuspocus/plain', new Y.Doc(),
    { WebSocketPolyfill: WebSocket, disableBc: true, params: { token: tok } })
  const readme = new WebsocketProvider(server.wsUrl, 'docs/readme', new Y.Doc(),
    { WebSocketPolyfill: WebSocket, disableBc: true, params: { token: tok } })
  t.after(() => close(reader, readme))
  await waitFor('plain is hocuspocus/plain', () => reader.doc.getMap('m').get('k') === 'plain', [[reader.doc, 'update']])
  await waitFor('readme synced', () => readme.synced, [[readme, 'sync']])
  assert.equal(readme.doc.getMap('m').get('k'), undefined)
  assert.ok(ro.unsyncedChanges > 0, 'a refused change is never reported saved')
})

/** A raw Hocuspocus frame: the name, then the message. */
function frame (name, write) {
  const e = encoding.createEncoder()
  encoding.writeVarString(e, name)
  write(e)
  return encoding.toUint8Array(e)
}

/** A raw socket that collects every frame (decoded name and type). */
async function rawSocket (server) {
  const ws = new WebSocket(hocuspocusUrl(server))
  ws.binaryType = 'arraybuffer'
  ws.got = []
  ws.on('message', (data) => {
    const d = decoding.createDecoder(new Uint8Array(data))
    const name = decoding.readVarString(d)
    const type = decoding.readVarUint(d)
    ws.got.push({ name, type, rest: d })
    ws.emit('frame')
  })
  ws.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })))
  await new Promise((resolve) => ws.on('open', resolve))
  return ws
}

const auth = (name, tok = '') => frame(name, (e) => { encoding.writeVarUint(e, 2); encoding.writeVarUint(e, 0); encoding.writeVarString(e, tok) })
const updateFrame = (name, write) => frame(name, (e) => {
  const doc = new Y.Doc()
  write(doc)
  encoding.writeVarUint(e, 0); encoding.writeVarUint(e, 2); encoding.writeVarUint8Array(e, Y.encodeStateAsUpdate(doc))
})

test('bad frames: a document\'s bad message ends that document only; a frame without a name ends the socket', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const ws = await rawSocket(server)
  t.after(() => ws.terminate())
  // An update for a document this socket never sends a token for: kept
  // unread (frames are handled in order, so by the time the answers below
  // arrive it has been), never applied.
  const sneaky = new Y.Doc()
  sneaky.getMap('m').set('sneaky', true)
  ws.send(frame('acme/never', (e) => { encoding.writeVarUint(e, 0); encoding.writeVarUint(e, 2); encoding.writeVarUint8Array(e, Y.encodeStateAsUpdate(sneaky)) }))
  ws.send(auth('acme/good'))
  ws.send(auth('acme/bad'))
  await waitFor('both authenticated', () => ws.got.filter((f) => f.type === 2).length === 2, [[ws, 'frame']])
  // An update that is not a Yjs update, for acme/bad: a close for it.
  ws.send(frame('acme/bad', (e) => { encoding.writeVarUint(e, 0); encoding.writeVarUint(e, 2); encoding.writeVarUint8Array(e, new Uint8Array([1, 200, 3])) }))
  // An unknown message type for acme/bad2 after its token.
  ws.send(auth('acme/bad2'))
  ws.send(frame('acme/bad2', (e) => encoding.writeVarUint(e, 42)))
  await waitFor('closes', () => ws.got.some((f) => f.name === 'acme/bad' && f.type === 7) &&
    ws.got.some((f) => f.name === 'acme/bad2' && f.type === 7), [[ws, 'frame']])
  const reason = (name) => decoding.readVarString(ws.got.find((f) => f.name === name && f.type === 7).rest)
  assert.match(reason('acme/bad'), /invalid update/)
  assert.match(reason('acme/bad2'), /unknown message type 42/)

  // acme/good still works: a real update is saved (sync status 1).
  const doc = new Y.Doc()
  doc.getMap('m').set('still', 'here')
  ws.send(frame('acme/good', (e) => { encoding.writeVarUint(e, 0); encoding.writeVarUint(e, 2); encoding.writeVarUint8Array(e, Y.encodeStateAsUpdate(doc)) }))
  await waitFor('saved', () => ws.got.some((f) => f.name === 'acme/good' && f.type === 8), [[ws, 'frame']])
  const status = ws.got.find((f) => f.name === 'acme/good' && f.type === 8)
  assert.equal(decoding.readVarUint(status.rest), 1)

  // Nothing of the bad document, or of the one never authorized, was stored.
  for (const doc of ['bad', 'never']) {
    const response = await fetch(`${server.httpUrl}/v1/docs/acme/${doc}/json`)
    assert.equal(response.status, 404, doc)
  }

  // A frame whose name is cut short: the socket ends with 1007.
  ws.send(new Uint8Array([40, 97]))
  const { code } = await ws.closed
  assert.equal(code, 1007)
})

test('a socket closed by its client is answered, and what it sent just before is kept', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  for (let round = 0; round < 5; round++) {
    const ws = await rawSocket(server)
    ws.send(auth('acme/closing'))
    ws.send(updateFrame('acme/closing', (d) => d.getArray('a').push([round])))
    ws.close(1000, 'done')
    const { code } = await ws.closed
    assert.equal(code, 1000, `round ${round}: the close is answered`)
  }
  const reader = new WebsocketProvider(server.wsUrl, 'acme/closing', new Y.Doc(), { WebSocketPolyfill: WebSocket, disableBc: true })
  t.after(() => close(reader))
  await waitFor('every round kept', () => reader.synced && reader.doc.getArray('a').length === 5,
    [[reader, 'sync'], [reader.doc, 'update']])
})

test('offline edits of a provider reach the others once it is back', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const socket = new HocuspocusProviderWebsocket({ url: hocuspocusUrl(server), WebSocketPolyfill: WebSocket })
  const away = new HocuspocusProvider({ websocketProvider: socket, name: 'acme/offline', document: new Y.Doc() })
  away.attach()
  const stay = hocuspocus(server, 'acme/offline')
  t.after(() => { close(away, stay); socket.destroy() })
  await Promise.all([synced(away), synced(stay)])
  socket.disconnect()
  await waitFor('offline', () => socket.status === 'disconnected', [[socket, 'status']])
  away.document.getText('t').insert(0, 'written offline. ')
  stay.document.getText('t').insert(0, 'written online. ')
  await socket.connect()
  const both = (doc) => doc.getText('t').toString().includes('offline') && doc.getText('t').toString().includes('online')
  await waitFor('merged both ways', () => both(away.document) && both(stay.document), [[away.document, 'update'], [stay.document, 'update']])
  assert.equal(away.document.getText('t').toString(), stay.document.getText('t').toString())
  await Promise.all([saved(away), saved(stay)])
})

test('edits made just before a provider is destroyed are kept', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  for (let round = 0; round < 5; round++) {
    const p = hocuspocus(server, 'acme/last')
    await synced(p)
    p.document.getArray('a').push([round])
    p.destroy()
  }
  const reader = new WebsocketProvider(server.wsUrl, 'acme/last', new Y.Doc(), { WebSocketPolyfill: WebSocket, disableBc: true })
  t.after(() => close(reader))
  await waitFor('every round kept', () => reader.synced && reader.doc.getArray('a').length === 5,
    [[reader, 'sync'], [reader.doc, 'update']])
})

test('two instances on Redis: providers converge, and stateless messages reach the others (a backend\'s too)', async (t) => {
  const redis = await new RedisProcess().start()
  t.after(() => redis.dispose())
  const first = await new YrelayProcess(['--log', redis.url]).start()
  const store = `sqlite://${join(first.dir, 'yrelay.db')}`
  const second = await new YrelayProcess(['--log', redis.url, '--store', store]).start()
  t.after(async () => { await second.dispose(); await first.dispose() })
  const heard = new EventEmitter()
  const messages = { a: [], b: [], c: [] }
  const listen = (who) => ({ onStateless: ({ payload }) => { messages[who].push(payload); heard.emit('stateless') } })
  const a = hocuspocus(first, 'acme/shared', listen('a'))
  const b = hocuspocus(second, 'acme/shared', listen('b'), HocuspocusProvider3)
  const c = hocuspocus(second, 'acme/shared', listen('c'))
  t.after(() => close(a, b, c))
  await Promise.all([synced(a), synced(b), synced(c)])

  a.document.getText('t').insert(0, 'from the first instance')
  await waitFor('across instances', () => b.document.getText('t').toString() === 'from the first instance', [[b.document, 'update']])
  await saved(a)

  a.sendStateless('ping from a')
  await waitFor('b and c hear a', () => messages.b.includes('ping from a') && messages.c.includes('ping from a'), [[heard, 'stateless']])
  const response = await fetch(`${first.httpUrl}/v1/docs/acme/shared/stateless`, { method: 'POST', body: 'from the backend' })
  assert.equal(response.status, 204)
  await waitFor('everyone hears the backend', () => ['a', 'b', 'c'].every((w) => messages[w].includes('from the backend')), [[heard, 'stateless']])
  assert.ok(!messages.a.includes('ping from a'), 'a sender does not hear itself')
})

test('a token sent again is checked again: a read-only one makes the document read-only, one without access closes it', async (t) => {
  const server = await new YrelayProcess(['--jwt-secret', SECRET]).start()
  t.after(() => server.dispose())
  const ws = await rawSocket(server)
  t.after(() => ws.terminate())
  const next = async (type) => {
    const seen = ws.got.length
    await waitFor(`a message of type ${type}`, () => ws.got.slice(seen).some((f) => f.type === type), [[ws, 'frame']])
    return ws.got.slice(seen).find((f) => f.type === type)
  }
  const answer = async (send, type) => { const got = next(type); ws.send(send); return got }
  const grant = (mode) => token('ann', [{ space: 'acme', doc: 'refresh', mode }])
  let reply = await answer(auth('acme/refresh', grant('rw')), 2)
  assert.equal(decoding.readVarUint(reply.rest), 2)
  assert.equal(decoding.readVarString(reply.rest), 'read-write')
  reply = await answer(updateFrame('acme/refresh', (d) => d.getMap('m').set('rw', 1)), 8)
  assert.equal(decoding.readVarUint(reply.rest), 1, 'saved while read-write')

  reply = await answer(auth('acme/refresh', grant('ro')), 2)
  decoding.readVarUint(reply.rest)
  assert.equal(decoding.readVarString(reply.rest), 'readonly')
  reply = await answer(updateFrame('acme/refresh', (d) => d.getMap('m').set('ro', 1)), 8)
  assert.equal(decoding.readVarUint(reply.rest), 0, 'not saved once read-only')

  reply = await answer(auth('acme/refresh', token('ann', [{ space: 'other', doc: '*', mode: 'rw' }])), 2)
  assert.equal(decoding.readVarUint(reply.rest), 1, 'permission denied')
  assert.match(decoding.readVarString(reply.rest), /no access/)

  const stored = await (await fetch(`${server.httpUrl}/v1/docs/acme/refresh/json?token=${grant('ro')}`)).json()
  assert.deepEqual(stored, { m: { rw: 1 } })
})

/** A raw socket, and how to wait for its next message of a type for a
 * document (`next`), or send a frame and wait for that (`answer`). */
async function conversation (t, server) {
  const ws = await rawSocket(server)
  t.after(() => ws.terminate())
  const next = async (type, name) => {
    const seen = ws.got.length
    const match = (f) => f.type === type && f.name === name
    await waitFor(`a message of type ${type} for ${name}`, () => ws.got.slice(seen).some(match), [[ws, 'frame']])
    return ws.got.slice(seen).find(match)
  }
  const answer = async (send, type, name) => { const got = next(type, name); ws.send(send); return got }
  return { ws, next, answer }
}

test('a token that expires ends its document, unless a fresh one was sent in time', async (t) => {
  const server = await new YrelayProcess(['--jwt-secret', SECRET]).start()
  t.after(() => server.dispose())
  const { next, answer } = await conversation(t, server)
  const access = [{ space: 'acme', doc: '*', mode: 'rw' }]
  const short = token('ann', access, 1)
  for (const name of ['acme/expires', 'acme/renewed']) {
    const reply = await answer(auth(name, short), 2, name)
    assert.equal(decoding.readVarUint(reply.rest), 2, 'authenticated')
  }
  const renewed = await answer(auth('acme/renewed', token('ann', access)), 2, 'acme/renewed')
  assert.equal(decoding.readVarUint(renewed.rest), 2, 'authenticated again')

  const denied = await next(2, 'acme/expires')
  assert.equal(decoding.readVarUint(denied.rest), 1, 'permission denied')
  assert.match(decoding.readVarString(denied.rest), /expired/)
  const saved = await answer(updateFrame('acme/renewed', (d) => d.getMap('m').set('still', 1)), 8, 'acme/renewed')
  assert.equal(decoding.readVarUint(saved.rest), 1, 'the renewed document still saves')
})

test('a revoke denies the documents a provider opened with the revoked token', async (t) => {
  const server = await new YrelayProcess(['--jwt-secret', SECRET]).start()
  t.after(() => server.dispose())
  const { next, answer } = await conversation(t, server)
  const access = [{ space: 'acme', doc: '*', mode: 'rw' }]
  for (const [name, sub] of [['acme/ann', 'ann'], ['acme/bob', 'bob']]) {
    const reply = await answer(auth(name, token(sub, access)), 2, name)
    assert.equal(decoding.readVarUint(reply.rest), 2, 'authenticated')
  }
  const denied = next(2, 'acme/ann')
  const revoked = await fetch(`${server.httpUrl}/v1/access/revoke`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token('admin', [{ space: '*', doc: '*', mode: 'rw' }])}` },
    body: JSON.stringify({ sub: 'ann' })
  })
  assert.equal(revoked.status, 200)
  const message = await denied
  assert.equal(decoding.readVarUint(message.rest), 1, 'permission denied')
  assert.match(decoding.readVarString(message.rest), /revoked/)
  const saved = await answer(updateFrame('acme/bob', (d) => d.getMap('m').set('still', 1)), 8, 'acme/bob')
  assert.equal(decoding.readVarUint(saved.rest), 1, "bob's document still saves")
})
