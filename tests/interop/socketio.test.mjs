// AFFiNE's Socket.IO `space:*` protocol, from the client's side, with npm
// `socket.io-client` 4.x and `yjs`; next to a stock y-websocket client.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as awarenessProtocol from 'y-protocols/awareness'
import { join } from 'node:path'
import { RedisProcess, YrelayProcess, waitFor, yrelayBin } from './server.mjs'
import { b64, call, collect, connect, mirrorAwareness, presence, unb64, update, ws } from './sio.mjs'

test('join, load, push, broadcasts to 0.25 and 0.26 clients, timestamps, delete', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const a = await connect(server)
  const old = await connect(server)
  const fresh = await connect(server, { transports: ['polling'] })
  t.after(() => { a.close(); old.close(); fresh.close() })

  // Every doc event needs space:join first.
  const notIn = await call(a, 'space:load-doc', { ...ws, docId: 'page1' })
  assert.equal(notIn.error.name, 'NOT_IN_SPACE')
  assert.equal(notIn.error.status, 403)
  assert.deepEqual(notIn.error.data, { spaceId: 'ws1' })

  for (const [socket, clientVersion] of [[a, '0.26.0'], [old, '0.25.3'], [fresh, '0.26.1-beta.2']]) {
    const joined = await call(socket, 'space:join', { ...ws, clientVersion })
    assert.deepEqual(joined, { data: { clientId: socket.id, success: true } })
  }

  const missingDoc = await call(a, 'space:load-doc', { ...ws, docId: 'page1' })
  assert.equal(missingDoc.error.name, 'DOC_NOT_FOUND')
  assert.deepEqual(missingDoc.error.data, { spaceId: 'ws1', docId: 'page1' })

  // Both other clients watch the doc (load-doc), then a pushes.
  const doc = new Y.Doc()
  doc.getText('content').insert(0, 'hello')
  const first = Y.encodeStateAsUpdate(doc)
  const pushed = await call(a, 'space:push-doc-update', { ...ws, docId: 'page1', update: b64(first) })
  assert.equal(pushed.data.accepted, true)
  assert.ok(pushed.data.timestamp > 0)

  const loaded = await call(old, 'space:load-doc', { ...ws, docId: 'page1' })
  const copy = new Y.Doc()
  Y.applyUpdate(copy, unb64(loaded.data.missing))
  assert.equal(copy.getText('content').toString(), 'hello')
  assert.deepEqual(unb64(loaded.data.state), Y.encodeStateVector(doc))
  assert.ok(loaded.data.timestamp > 0)
  const none = await call(fresh, 'space:load-doc', { ...ws, docId: 'page1', stateVector: b64(Y.encodeStateVector(doc)) })
  assert.deepEqual(unb64(none.data.missing), new Uint8Array([0, 0]), 'nothing missing against the full state vector')

  const singles = collect(old, 'space:broadcast-doc-update')
  const batches = collect(fresh, 'space:broadcast-doc-updates')
  const echo = collect(a, 'space:broadcast-doc-updates')
  // A burst: the 0.25 client gets one event per update, the 0.26 client
  // gets them batched (merged when several were pending).
  const burst = []
  doc.on('update', (u) => burst.push(u))
  for (let i = 0; i < 30; i++) doc.getText('content').insert(0, `${i} `)
  await Promise.all(burst.map((u) => call(a, 'space:push-doc-update', { ...ws, docId: 'page1', update: b64(u) })))

  const viaSingles = new Y.Doc()
  Y.applyUpdate(viaSingles, first)
  const viaBatches = new Y.Doc()
  Y.applyUpdate(viaBatches, first)
  await waitFor('every single broadcast', () => singles.length === 30, [[old, 'space:broadcast-doc-update']])
  for (const e of singles) {
    assert.equal(e.docId, 'page1')
    assert.equal(e.spaceType, 'workspace')
    Y.applyUpdate(viaSingles, unb64(e.update))
  }
  const received = () => batches.reduce((n, e) => n + e.updates.length, 0)
  await waitFor('the batched broadcasts', () => {
    for (const e of batches.splice(0)) {
      // Several pending updates arrive merged into one (compressed: true).
      assert.equal(e.updates.length, 1)
      assert.equal(typeof e.compressed, 'boolean')
      for (const u of e.updates) Y.applyUpdate(viaBatches, unb64(u))
    }
    return viaBatches.getText('content').toString() === doc.getText('content').toString()
  }, [[fresh, 'space:broadcast-doc-updates']])
  assert.equal(received(), 0)
  assert.equal(viaSingles.getText('content').toString(), doc.getText('content').toString())
  assert.equal(echo.length, 0, 'the writer is not sent its own updates')

  // Timestamps, then delete.
  const stamps = await call(a, 'space:load-doc-timestamps', { ...ws })
  assert.ok(stamps.data.page1 > 0, JSON.stringify(stamps))
  const later = await call(a, 'space:load-doc-timestamps', { ...ws, timestamp: stamps.data.page1 })
  assert.deepEqual(later.data, {})
  assert.deepEqual(await call(a, 'space:delete-doc', { ...ws, docId: 'page1' }), { data: { success: true } })
  const gone = await call(a, 'space:load-doc', { ...ws, docId: 'page1' })
  assert.equal(gone.error.name, 'DOC_NOT_FOUND')

  // Legacy doc ids name the same document.
  await call(a, 'space:push-doc-update', { ...ws, docId: 'ws:ws1:page:page2', update: b64(first) })
  const legacy = await call(a, 'space:load-doc', { ...ws, docId: 'page2' })
  assert.ok(legacy.data.missing)

  const left = await call(a, 'space:leave', { ...ws })
  assert.deepEqual(left, { data: { clientId: a.id, success: true } })
  assert.equal((await call(a, 'space:load-doc', { ...ws, docId: 'page2' })).error.name, 'NOT_IN_SPACE')
})

test('clients below 0.25 are refused and disconnected', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const socket = await connect(server)
  const gone = new Promise((resolve) => socket.once('disconnect', resolve))
  const id = socket.id // the client forgets it once disconnected
  const answer = await call(socket, 'space:join', { ...ws, clientVersion: '0.24.2' })
  assert.deepEqual(answer, { data: { clientId: id, success: false } })
  await gone
})

test('awareness: join, update relayed to the others, collect, leave', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const a = await connect(server)
  const b = await connect(server)
  t.after(() => { a.close(); b.close() })
  for (const s of [a, b]) {
    await call(s, 'space:join', { ...ws, clientVersion: '0.26.0' })
    const joined = await call(s, 'space:join-awareness', { ...ws, docId: 'page1', clientVersion: '0.26.0' })
    assert.equal(joined.data.success, true)
  }
  const toB = collect(b, 'space:broadcast-awareness-update')
  const toA = collect(a, 'space:broadcast-awareness-update')
  const awarenessUpdate = presence(t, { user: 'a' }).encode()
  assert.deepEqual(await call(a, 'space:update-awareness', { ...ws, docId: 'page1', awarenessUpdate }), { data: {} })
  await waitFor('the relayed awareness', () => toB.length === 1, [[b, 'space:broadcast-awareness-update']])
  assert.deepEqual(toB[0], { ...ws, docId: 'page1', awarenessUpdate })
  assert.equal(toA.length, 0)

  const collected = collect(b, 'space:collect-awareness')
  const asked = await call(a, 'space:load-awarenesses', { ...ws, docId: 'page1' })
  assert.deepEqual(asked, { data: { clientId: a.id } })
  await waitFor('collect-awareness', () => collected.length === 1, [[b, 'space:collect-awareness']])
  assert.deepEqual(collected[0], { ...ws, docId: 'page1' })

  assert.equal((await call(b, 'space:leave-awareness', { ...ws, docId: 'page1' })).data.success, true)
  await call(a, 'space:update-awareness', { ...ws, docId: 'page1', awarenessUpdate })
  // b left: a round trip on b proves nothing more arrived for it.
  await call(b, 'space:load-doc-timestamps', { ...ws })
  assert.equal(toB.length, 1)
})

test('bad input gets BAD_REQUEST and leaves the socket usable', async (t) => {
  const server = await new YrelayProcess(['--max-message-size', '1048576']).start()
  t.after(() => server.dispose())
  const s = await connect(server)
  t.after(() => s.close())
  await call(s, 'space:join', { ...ws, clientVersion: '0.26.0' })
  const cases = [
    ['space:join', { spaceType: 'workspace' }],
    ['space:join', { ...ws, clientVersion: 'latest' }],
    ['space:join', 'not an object'],
    ['space:load-doc', { spaceType: 'moonspace', spaceId: 'ws1', docId: 'x' }],
    ['space:load-doc', { ...ws, docId: 'x', stateVector: '%%%' }],
    ['space:load-doc', { ...ws, docId: 'x', stateVector: b64([255, 255, 255]) }],
    ['space:push-doc-update', { ...ws, docId: 'x' }],
    ['space:push-doc-update', { ...ws, docId: 'x', update: 12 }],
    ['space:push-doc-update', { ...ws, docId: 'x', update: '!!not base64!!' }],
    ['space:push-doc-update', { ...ws, docId: 'x', update: b64([1, 2, 3, 4, 5]) }],
    ['space:push-doc-update', { ...ws, docId: 'bad id', update: b64(update((d) => d.getMap('m').set('a', 1))) }],
    ['space:update-awareness', { ...ws, docId: 'x', awarenessUpdate: '***' }],
    ['space:update-awareness', { ...ws, docId: 'x', awarenessUpdate: b64([1, 2, 3]) }]
  ]
  for (const [event, payload] of cases) {
    const answer = await call(s, event, payload)
    assert.equal(answer.error?.name, 'BAD_REQUEST', `${event} ${JSON.stringify(payload)} → ${JSON.stringify(answer)}`)
    assert.equal(answer.error.status, 400)
  }
  // Nothing was stored, and the socket still works.
  const stamps = await call(s, 'space:load-doc-timestamps', { ...ws })
  assert.deepEqual(stamps.data, {})
  const big = new Y.Doc()
  big.getText('t').insert(0, 'x'.repeat(1000 * 1024))
  const accepted = await call(s, 'space:push-doc-update', { ...ws, docId: 'big', update: b64(Y.encodeStateAsUpdate(big)) })
  assert.equal(accepted.data.accepted, true, 'updates up to --max-message-size are accepted')
})

test('a Socket.IO client and a y-websocket client edit one document and converge', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const s = await connect(server)
  const ydoc = new Y.Doc()
  const provider = new WebsocketProvider(server.wsUrl, 'ws1/shared', ydoc, { WebSocketPolyfill: WebSocket, disableBc: true })
  t.after(() => { s.close(); provider.destroy(); ydoc.destroy() })
  await waitFor('y-websocket sync', () => provider.synced, [[provider, 'sync']])
  await call(s, 'space:join', { ...ws, clientVersion: '0.26.0' })

  const affine = new Y.Doc()
  affine.getMap('meta').set('from', 'affine')
  await call(s, 'space:push-doc-update', { ...ws, docId: 'shared', update: b64(Y.encodeStateAsUpdate(affine)) })
  const loaded = await call(s, 'space:load-doc', { ...ws, docId: 'shared' })
  assert.ok(loaded.data)
  const incoming = collect(s, 'space:broadcast-doc-updates')
  ydoc.getMap('meta').set('also', 'y-websocket')
  await waitFor('y-websocket sees the Socket.IO write', () => ydoc.getMap('meta').get('from') === 'affine', [[ydoc, 'update']])
  await waitFor('Socket.IO gets the y-websocket write', () => incoming.length > 0, [[s, 'space:broadcast-doc-updates']])
  for (const e of incoming) for (const u of e.updates) Y.applyUpdate(affine, unb64(u))
  assert.deepEqual(Y.encodeStateVector(affine), Y.encodeStateVector(ydoc))
  assert.deepEqual(affine.getMap('meta').toJSON(), { from: 'affine', also: 'y-websocket' })
})

test('access: sign-in required, userspace ownership, read-only writes denied, blocked docs', async (t) => {
  const secret = 'sio-secret'
  const server = await new YrelayProcess(['--jwt-secret', secret]).start()
  t.after(() => server.dispose())
  const mint = (...args) => execFileSync(yrelayBin, ['token', ...args, '--jwt-secret', secret]).toString().trim()

  await assert.rejects(connect(server), /sign in required/)
  const ann = await connect(server, { auth: { token: mint('--sub', 'ann', '--space', 'ws1') } })
  const bob = await connect(server, { extraHeaders: { authorization: `Bearer ${mint('--sub', 'bob', '--space', 'ws1', '--read-only')}` }, transports: ['polling'] })
  t.after(() => { ann.close(); bob.close() })

  const mine = await call(ann, 'space:join', { spaceType: 'userspace', spaceId: 'ann', clientVersion: '0.26.0' })
  assert.equal(mine.data.success, true)
  const theirs = await call(ann, 'space:join', { spaceType: 'userspace', spaceId: 'bob', clientVersion: '0.26.0' })
  assert.equal(theirs.error.name, 'SPACE_ACCESS_DENIED')
  assert.deepEqual(theirs.error.data, { spaceId: 'bob' })
  const other = await call(ann, 'space:join', { spaceType: 'workspace', spaceId: 'elsewhere', clientVersion: '0.26.0' })
  assert.equal(other.error.name, 'SPACE_ACCESS_DENIED')

  const u = b64(update((d) => d.getMap('m').set('k', 1)))
  for (const s of [ann, bob]) await call(s, 'space:join', { ...ws, clientVersion: '0.26.0' })
  assert.equal((await call(ann, 'space:push-doc-update', { ...ws, docId: 'd', update: u })).data.accepted, true)
  const denied = await call(bob, 'space:push-doc-update', { ...ws, docId: 'd', update: u })
  assert.equal(denied.error.name, 'DOC_ACTION_DENIED')
  assert.equal(denied.error.data.docId, 'd')
  assert.ok((await call(bob, 'space:load-doc', { ...ws, docId: 'd' })).data, 'read-only may load')

  const annToken = mint('--sub', 'ann', '--space', 'ws1')
  const patched = await fetch(`${server.httpUrl}/v1/docs/ws1/d`, {
    method: 'PATCH', headers: { authorization: `Bearer ${annToken}`, 'content-type': 'application/json' }, body: '{"blocked": true}'
  })
  assert.equal(patched.status, 200)
  const blocked = await call(ann, 'space:push-doc-update', { ...ws, docId: 'd', update: b64(update((d) => d.getMap('m').set('k', 2))) })
  assert.equal(blocked.error.name, 'DOC_UPDATE_BLOCKED')
  assert.deepEqual(blocked.error.data, { spaceId: 'ws1', docId: 'd' })
})

test('across instances: pushes, editors and awareness reach Socket.IO and y-websocket clients on another', async (t) => {
  const redis = await new RedisProcess().start()
  t.after(() => redis.dispose())
  const secret = 'across-secret'
  const auth = ['--log', redis.url, '--jwt-secret', secret]
  const first = await new YrelayProcess(auth).start()
  // Same store (one SQLite file, WAL) and the same Redis log: two instances.
  const store = `sqlite://${join(first.dir, 'yrelay.db')}`
  const second = await new YrelayProcess([...auth, '--store', store]).start()
  t.after(async () => { await second.dispose(); await first.dispose() })
  const token = (sub) => execFileSync(yrelayBin, ['token', '--sub', sub, '--space', 'ws1', '--jwt-secret', secret]).toString().trim()

  const a = await connect(first, { auth: { token: token('ann') } })
  const b = await connect(second, { auth: { token: token('bob') } })
  t.after(() => { a.close(); b.close() })
  for (const s of [a, b]) await call(s, 'space:join', { ...ws, clientVersion: '0.26.0' })
  const seed = update((d) => d.getMap('m').set('from', 'a'))
  assert.equal((await call(a, 'space:push-doc-update', { ...ws, docId: 'across', update: b64(seed) })).data.accepted, true)
  const loaded = await call(b, 'space:load-doc', { ...ws, docId: 'across' })
  const mirror = new Y.Doc()
  Y.applyUpdate(mirror, unb64(loaded.data.missing))
  assert.equal(mirror.getMap('m').get('from'), 'a')

  const ydoc = new Y.Doc()
  const provider = new WebsocketProvider(second.wsUrl, 'ws1/across', ydoc,
    { WebSocketPolyfill: WebSocket, disableBc: true, params: { token: token('cat') } })
  t.after(() => { provider.destroy(); ydoc.destroy() })
  await waitFor('y-websocket sync', () => provider.synced, [[provider, 'sync']])

  const incoming = collect(b, 'space:broadcast-doc-updates')
  const next = update((d) => { Y.applyUpdate(d, seed); d.getMap('m').set('again', 1) })
  await call(a, 'space:push-doc-update', { ...ws, docId: 'across', update: b64(next) })
  await waitFor('the broadcast on the other instance', () => incoming.length > 0, [[b, 'space:broadcast-doc-updates']])
  for (const e of incoming) for (const u of e.updates) Y.applyUpdate(mirror, unb64(u))
  assert.equal(mirror.getMap('m').get('again'), 1)
  assert.deepEqual(incoming.map((e) => e.editor), incoming.map(() => 'ann'), 'the editor travels with the update')
  await waitFor('y-websocket on the other instance', () => ydoc.getMap('m').get('again') === 1, [[ydoc, 'update']])

  // An edit by the y-websocket client (cat, second instance) reaches a
  // (first instance) with its editor.
  await call(a, 'space:load-doc', { ...ws, docId: 'across' })
  const toA = collect(a, 'space:broadcast-doc-updates')
  ydoc.getMap('m').set('cat', true)
  await waitFor("cat's edit on a", () => toA.length > 0, [[a, 'space:broadcast-doc-updates']])
  assert.equal(toA[0].editor, 'cat')

  // Awareness crosses instances and transports: a (first instance), b and
  // the y-websocket client (second) see each other; a's state goes when a does.
  const seenByA = new awarenessProtocol.Awareness(new Y.Doc())
  const seenByB = new awarenessProtocol.Awareness(new Y.Doc())
  t.after(() => { seenByA.destroy(); seenByB.destroy() })
  mirrorAwareness(a, seenByA)
  mirrorAwareness(b, seenByB)
  for (const s of [a, b]) {
    await call(s, 'space:join-awareness', { ...ws, docId: 'across', clientVersion: '0.26.0' })
  }
  const fromA = presence(t, { user: 'a' })
  await call(a, 'space:update-awareness', { ...ws, docId: 'across', awarenessUpdate: fromA.encode() })
  await waitFor("a's presence on b", () => seenByB.getStates().get(fromA.id)?.user === 'a',
    [[b, 'space:broadcast-awareness-update']])
  const providerSeesA = () => provider.awareness.getStates().get(fromA.id)?.user === 'a'
  await waitFor("a's presence on y-websocket", providerSeesA, [[provider.awareness, 'change']])
  provider.awareness.setLocalState({ user: 'y-websocket' })
  const wsId = provider.awareness.clientID
  await waitFor("y-websocket's presence on a", () => seenByA.getStates().get(wsId)?.user === 'y-websocket',
    [[a, 'space:broadcast-awareness-update']])

  // A socket that (re)loads gets every state the document's replica knows.
  const late = await connect(first, { auth: { token: token('dan') } })
  t.after(() => late.close())
  await call(late, 'space:join', { ...ws, clientVersion: '0.26.0' })
  await call(late, 'space:join-awareness', { ...ws, docId: 'across', clientVersion: '0.26.0' })
  const seenByLate = new awarenessProtocol.Awareness(new Y.Doc())
  t.after(() => seenByLate.destroy())
  mirrorAwareness(late, seenByLate)
  assert.deepEqual(await call(late, 'space:load-awarenesses', { ...ws, docId: 'across' }), { data: { clientId: late.id } })
  await waitFor('every known presence', () =>
    seenByLate.getStates().get(fromA.id)?.user === 'a' && seenByLate.getStates().get(wsId)?.user === 'y-websocket',
  [[late, 'space:broadcast-awareness-update']])

  a.close()
  await waitFor("a's presence gone on b", () => !seenByB.getStates().has(fromA.id), [[b, 'space:broadcast-awareness-update']])
  await waitFor("a's presence gone on y-websocket", () => !providerSeesA(), [[provider.awareness, 'change']])
})

test('limits and outages: past the update rate TOO_MANY_REQUESTS, log down FAILED_TO_SAVE_UPDATES', async (t) => {
  const redis = await new RedisProcess().start()
  t.after(() => redis.dispose())
  const server = await new YrelayProcess(['--log', redis.url, '--max-updates-per-sec', '5']).start()
  t.after(() => server.dispose())
  const s = await connect(server)
  t.after(() => s.close())
  await call(s, 'space:join', { ...ws, clientVersion: '0.26.0' })
  const doc = new Y.Doc()
  const updates = []
  doc.on('update', (u) => updates.push(u))
  for (let i = 0; i < 20; i++) doc.getMap('m').set('k', i)
  const answers = await Promise.all(updates.map((u) => call(s, 'space:push-doc-update', { ...ws, docId: 'rated', update: b64(u) })))
  const limited = answers.filter((a) => a.error?.name === 'TOO_MANY_REQUESTS')
  assert.ok(limited.length > 0, 'a burst of 20 is over 5/s (bursts of 10)')
  assert.equal(limited[0].error.status, 429)
  assert.ok(answers.some((a) => a.data?.accepted), 'the first ones within the burst are accepted')

  // The log (Redis) goes away: pushes are refused, not acknowledged (from a
  // fresh socket, whose rate budget is whole).
  const fresh = await connect(server)
  t.after(() => fresh.close())
  await call(fresh, 'space:join', { ...ws, clientVersion: '0.26.0' })
  await redis.dispose()
  const failed = await fresh.timeout(60000).emitWithAck('space:push-doc-update', { ...ws, docId: 'down', update: b64(update((d) => d.getMap('m').set('x', 1))) })
  assert.equal(failed.error?.name, 'FAILED_TO_SAVE_UPDATES', JSON.stringify(failed))
  assert.equal(failed.error.status, 500)
})

test('one size limit on both engines, and sockets count against --max-connections', async (t) => {
  const limit = 1 << 20
  const server = await new YrelayProcess(['--max-message-size', String(limit), '--max-connections', '3']).start()
  t.after(() => server.dispose())
  const text = (n) => {
    const doc = new Y.Doc()
    doc.getText('t').insert(0, 'x'.repeat(n))
    return b64(Y.encodeStateAsUpdate(doc))
  }
  for (const transports of [['websocket'], ['polling']]) {
    const socket = await connect(server, { transports })
    t.after(() => socket.disconnect())
    const space = { ...ws, spaceId: `size-${transports[0]}` }
    await call(socket, 'space:join', { ...space, clientVersion: '0.26.0' })
    // Just over the limit: a clear error, nothing stored.
    const over = await call(socket, 'space:push-doc-update', { ...space, docId: 'big', update: text(limit + 10000) })
    assert.equal(over.error?.name, 'BODY_TOO_LARGE', JSON.stringify(over).slice(0, 200))
    const missing = await call(socket, 'space:load-doc', { ...space, docId: 'big' })
    assert.equal(missing.error?.name, 'DOC_NOT_FOUND')
    // Just under it: accepted on both engines.
    const under = await call(socket, 'space:push-doc-update', { ...space, docId: 'fits', update: text(limit - 1000) })
    assert.equal(under.data?.accepted, true, JSON.stringify(under).slice(0, 200))
    socket.disconnect()
  }
  // Far over it (5 MB): refused by the engine itself, never stored.
  const socket = await connect(server, { transports: ['polling'] })
  const space = { ...ws, spaceId: 'size-huge' }
  await call(socket, 'space:join', { ...space, clientVersion: '0.26.0' })
  await call(socket, 'space:push-doc-update', { ...space, docId: 'huge', update: text(5 * limit) }).catch(() => {})
  socket.disconnect()
  const check = await connect(server)
  await call(check, 'space:join', { ...space, clientVersion: '0.26.0' })
  assert.equal((await call(check, 'space:load-doc', { ...space, docId: 'huge' })).error?.name, 'DOC_NOT_FOUND')

  // --max-connections 3 counts Socket.IO sockets: the 4th is refused at
  // its engine.io handshake, before the server keeps anything for it.
  const more = [await connect(server), await connect(server)]
  t.after(() => { for (const s of [check, ...more]) s.disconnect() })
  await assert.rejects(connect(server))
  const handshake = await fetch(`${server.httpUrl}/socket.io/?EIO=4&transport=polling`)
  assert.equal(handshake.status, 503)
  assert.match(await handshake.text(), /TOO_MANY_CONNECTIONS/)
})

test('documents per socket and load rate are bounded; what a socket loaded is released when it leaves', async (t) => {
  const server = await new YrelayProcess([
    '--idle-unload-secs', '0.2', '--max-docs-per-connection', '60', '--max-syncs-per-sec', '10'
  ]).start()
  t.after(() => server.dispose())
  const socket = await connect(server)
  t.after(() => socket.disconnect())
  await call(socket, 'space:join', { ...ws, clientVersion: '0.26.0' })
  const metric = async (name) => {
    const text = await (await fetch(`${server.httpUrl}/metrics`)).text()
    const line = text.split('\n').find((l) => l.startsWith(name + ' '))
    return line ? Number(line.split(' ')[1]) : 0
  }
  // 60 loads of ids that do not exist, within the sync rate (10/s).
  let answered = 0
  for (let i = 0; i < 60; i++) {
    const answer = await call(socket, 'space:load-doc', { ...ws, docId: `nope-${i}` })
    if (answer.error?.name === 'TOO_MANY_REQUESTS') {
      await new Promise((resolve) => setTimeout(resolve, 150))
      i--
      continue
    }
    assert.equal(answer.error?.name, 'DOC_NOT_FOUND')
    answered++
  }
  assert.equal(answered, 60)
  // The 61st document is one too many for this socket.
  const more = await call(socket, 'space:load-doc', { ...ws, docId: 'one-more' })
  assert.equal(more.error?.name, 'TOO_MANY_DOCS')
  // A burst past the sync rate is refused.
  const burst = await Promise.all(Array.from({ length: 40 }, () =>
    call(socket, 'space:load-doc', { ...ws, docId: 'nope-0' })))
  assert.ok(burst.some((a) => a.error?.name === 'TOO_MANY_REQUESTS'))
  // Once the socket leaves, nothing it loaded stays (the gauge is polled:
  // no event announces it).
  socket.disconnect()
  const deadline = Date.now() + 20000
  while ((await metric('yrelay_docs_loaded')) !== 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  assert.equal(await metric('yrelay_docs_loaded'), 0)
})

test('a socket whose token expires is disconnected, and its stale token refused at reconnect', async (t) => {
  const secret = 'sio-secret'
  const server = await new YrelayProcess(['--jwt-secret', secret]).start()
  t.after(() => server.dispose())
  const mint = (...args) => execFileSync(yrelayBin, ['token', ...args, '--jwt-secret', secret]).toString().trim()
  const short = mint('--sub', 'ann', '--space', 'ws1', '--ttl', '1s')
  const expiring = await connect(server, { auth: { token: short } })
  const stays = await connect(server, { auth: { token: mint('--sub', 'bob', '--space', 'ws1') } })
  t.after(() => { expiring.close(); stays.close() })
  for (const s of [expiring, stays]) assert.equal((await call(s, 'space:join', { ...ws, clientVersion: '0.26.0' })).data.success, true)

  const reason = await new Promise((resolve) => expiring.once('disconnect', resolve))
  assert.equal(reason, 'io server disconnect')
  await assert.rejects(connect(server, { auth: { token: short } }), /sign in required: the token has expired/)
  assert.ok(stays.connected)
  const pushed = await call(stays, 'space:push-doc-update', { ...ws, docId: 'd', update: b64(update((d) => d.getMap('m').set('k', 1))) })
  assert.equal(pushed.data.accepted, true)
})

test('a revoke disconnects the sockets of its subject, and one of a document refuses only that document', async (t) => {
  const secret = 'sio-secret'
  const server = await new YrelayProcess(['--jwt-secret', secret]).start()
  t.after(() => server.dispose())
  const mint = (...args) => execFileSync(yrelayBin, ['token', ...args, '--jwt-secret', secret]).toString().trim()
  const admin = mint('--sub', 'admin', '--space', '*')
  const revoke = (body) => fetch(`${server.httpUrl}/v1/access/revoke`, {
    method: 'POST', headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' }, body: JSON.stringify(body)
  })
  const annToken = mint('--sub', 'ann', '--space', 'ws1')
  const ann = await connect(server, { auth: { token: annToken } })
  const bob = await connect(server, { auth: { token: mint('--sub', 'bob', '--space', 'ws1') } })
  t.after(() => { ann.close(); bob.close() })
  for (const s of [ann, bob]) assert.equal((await call(s, 'space:join', { ...ws, clientVersion: '0.26.0' })).data.success, true)
  const push = (s, docId) => call(s, 'space:push-doc-update', { ...ws, docId, update: b64(update((d) => d.getMap('m').set(docId, 1))) })

  // One document: bob's writes to it are refused, the rest still work.
  assert.equal((await revoke({ sub: 'bob', space: 'ws1', doc: 'secret' })).status, 200)
  const refused = await push(bob, 'secret')
  assert.equal(refused.error?.name, 'DOC_ACTION_DENIED', JSON.stringify(refused))
  assert.equal((await push(bob, 'open')).data.accepted, true)
  assert.ok(bob.connected)

  // The subject everywhere: disconnected, and its token cannot join again.
  const gone = new Promise((resolve) => ann.once('disconnect', resolve))
  assert.equal((await revoke({ sub: 'ann' })).status, 200)
  assert.equal(await gone, 'io server disconnect')
  const again = await connect(server, { auth: { token: annToken } })
  t.after(() => again.close())
  const joined = await call(again, 'space:join', { ...ws, clientVersion: '0.26.0' })
  assert.notEqual(joined.data?.success, true, JSON.stringify(joined))
  assert.ok(bob.connected)
})
