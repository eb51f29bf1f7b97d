// AFFiNE's batch protocol (clients from 0.27.5: `space:join-batch`), from the
// client's side with npm `socket.io-client` and `yjs`, beside legacy 0.26
// sockets and a y-websocket client, on two instances sharing a Redis log.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as awarenessProtocol from 'y-protocols/awareness'
import { RedisProcess, YrelayProcess, waitFor, yrelayBin } from './server.mjs'
import { b64, call, collect, connect, unb64, update, ws } from './sio.mjs'

const VERSION = '0.27.5'

/** Polls `check` (async) until it holds: for what only the server's metrics show. */
async function until (what, check, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

async function metric (server, sample) {
  const text = await (await fetch(`${server.httpUrl}/metrics`)).text()
  const line = text.split('\n').find((l) => l.startsWith(sample + ' '))
  return line ? Number(line.split(' ')[1]) : 0
}

test('batch join: subscriptions, invalidations from any transport and instance, awareness, leave', async (t) => {
  const redis = await new RedisProcess().start()
  t.after(() => redis.dispose())
  const first = await new YrelayProcess(['--log', redis.url]).start()
  const store = `sqlite://${join(first.dir, 'yrelay.db')}`
  const second = await new YrelayProcess(['--log', redis.url, '--store', store]).start()
  t.after(async () => { await second.dispose(); await first.dispose() })

  // Refusals: too old (answered, then disconnected), bad lists.
  const old = await connect(first)
  const refused = await call(old, 'space:join-batch', { spaces: [ws], clientVersion: '0.27.4' })
  assert.equal(refused.data.success, false)
  await waitFor('the old client disconnected', () => !old.connected, [[old, 'disconnect']])
  const a = await connect(first)
  const b = await connect(second)
  const legacy = await connect(first)
  t.after(() => { a.close(); b.close(); legacy.close() })
  for (const spaces of [[], Array.from({ length: 101 }, (_, i) => ({ ...ws, docId: `d${i}` })),
    [ws, { spaceType: 'workspace', spaceId: 'other' }], [{ ...ws, docId: 'x' }, { ...ws, docId: 'x' }]]) {
    const bad = await call(a, 'space:join-batch', { spaces, clientVersion: VERSION })
    assert.equal(bad.error?.name, 'BAD_REQUEST', JSON.stringify(bad))
  }
  const before = await call(a, 'space:load-doc', { ...ws, docId: 'd1' })
  assert.equal(before.error?.name, 'NOT_IN_SPACE', 'a refused join changes nothing')

  // a (first instance) and b (second) subscribe to d1; a legacy 0.26 socket
  // joins the space the old way.
  for (const s of [a, b]) {
    const joined = await call(s, 'space:join-batch', { spaces: [ws, { ...ws, docId: 'd1' }], clientVersion: '0.27.5-beta.1' })
    assert.deepEqual(joined.data, { clientId: s.id, success: true })
  }
  assert.equal((await call(legacy, 'space:join', { ...ws, clientVersion: '0.26.0' })).data.success, true)
  const toA = collect(a, 'space:broadcast-doc-updates')
  const toB = collect(b, 'space:broadcast-doc-updates')
  const toLegacy = collect(legacy, 'space:broadcast-doc-updates')
  const invalidA = collect(a, 'space:broadcast-doc-invalidation')
  const invalidB = collect(b, 'space:broadcast-doc-invalidation')
  await call(legacy, 'space:load-doc', { ...ws, docId: 'd1' })

  // b pushes to d1: a gets the update and an invalidation across
  // instances, the legacy socket its 0.26 broadcast, b nothing of its own.
  const first1 = update((d) => d.getMap('m').set('by', 'b'))
  assert.equal((await call(b, 'space:push-doc-update', { ...ws, docId: 'd1', update: b64(first1) })).data.accepted, true)
  await waitFor("b's update on a", () => toA.length > 0 && invalidA.length > 0,
    [[a, 'space:broadcast-doc-updates'], [a, 'space:broadcast-doc-invalidation']])
  const mirror = new Y.Doc()
  for (const u of toA[0].updates) Y.applyUpdate(mirror, unb64(u))
  assert.equal(mirror.getMap('m').get('by'), 'b')
  assert.equal(toA[0].docId, 'd1')
  assert.equal(invalidA[0].spaceId, 'ws1')
  assert.equal(invalidA[0].spaceType, 'workspace')
  assert.equal(typeof invalidA[0].timestamp, 'number')
  await waitFor("b's update on the legacy socket", () => toLegacy.length > 0, [[legacy, 'space:broadcast-doc-updates']])
  assert.equal(toB.length, 0, 'the sender never gets its own update back')

  // A document b did not subscribe to, written on another transport (a
  // y-websocket client on the first instance): b gets an invalidation only.
  const ydoc = new Y.Doc()
  const provider = new WebsocketProvider(first.wsUrl, 'ws1/d3', ydoc, { WebSocketPolyfill: WebSocket, disableBc: true })
  t.after(() => { provider.destroy(); ydoc.destroy() })
  await waitFor('y-websocket sync', () => provider.synced, [[provider, 'sync']])
  const invalidations = invalidB.length
  ydoc.getMap('m').set('from', 'y-websocket')
  await waitFor('an invalidation on b', () => invalidB.length > invalidations, [[b, 'space:broadcast-doc-invalidation']])
  assert.ok(toB.every((e) => e.docId !== 'd3'), 'no updates of a document b did not subscribe to')

  // Awareness rides on the subscription, across instances.
  const seenByB = new awarenessProtocol.Awareness(new Y.Doc())
  t.after(() => seenByB.destroy())
  b.on('space:broadcast-awareness-update', (e) =>
    awarenessProtocol.applyAwarenessUpdate(seenByB, unb64(e.awarenessUpdate), 'server'))
  const mine = new awarenessProtocol.Awareness(new Y.Doc())
  t.after(() => mine.destroy())
  mine.setLocalState({ user: 'a' })
  const awarenessUpdate = b64(awarenessProtocol.encodeAwarenessUpdate(mine, [mine.clientID]))
  assert.deepEqual(await call(a, 'space:update-awareness', { ...ws, docId: 'd1', awarenessUpdate }), { data: {} })
  await waitFor("a's presence on b", () => seenByB.getStates().get(mine.clientID)?.user === 'a',
    [[b, 'space:broadcast-awareness-update']])

  // b ends its subscription to d1: no more updates of it, still invalidations.
  assert.equal((await call(b, 'space:leave-batch', { ...ws, docIds: ['d1'] })).data.success, true)
  const updatesBefore = toB.length
  const invalidBefore = invalidB.length
  const second1 = update((d) => { Y.applyUpdate(d, first1); d.getMap('m').set('again', 1) })
  await call(a, 'space:push-doc-update', { ...ws, docId: 'd1', update: b64(second1) })
  await waitFor('an invalidation on b', () => invalidB.length > invalidBefore, [[b, 'space:broadcast-doc-invalidation']])
  await waitFor("a's push on the legacy socket", () => toLegacy.some((e) => e.updates.length && e.docId === 'd1' && toLegacy.length > 1),
    [[legacy, 'space:broadcast-doc-updates']])
  assert.equal(toB.length, updatesBefore, 'no updates after the subscription ended')

  // With no subscription left, an empty leave-batch leaves the space.
  assert.equal((await call(b, 'space:leave-batch', { ...ws, docIds: [] })).data.success, true)
  assert.equal((await call(b, 'space:load-doc', { ...ws, docId: 'd1' })).error?.name, 'NOT_IN_SPACE')

  // What the server does not know gets an error ack, never silence.
  const unknown = await call(a, 'space:no-such-event', { ...ws })
  assert.equal(unknown.error?.name, 'BAD_REQUEST')
  assert.match(unknown.error.message, /space:no-such-event/)
  const lifecycle = await call(a, 'space:doc-lifecycle', { ...ws, docId: 'd1', lifecycle: 'trash' })
  assert.equal(lifecycle.error?.name, 'BAD_REQUEST')
})

test('batch join: access is all or nothing, and a subscription ends when its token expires', async (t) => {
  const secret = 'batch-secret'
  const server = await new YrelayProcess(['--jwt-secret', secret]).start()
  t.after(() => server.dispose())
  const mint = (...args) => execFileSync(yrelayBin, ['token', ...args, '--jwt-secret', secret]).toString().trim()

  const writer = await connect(server, { auth: { token: mint('--sub', 'ann', '--space', 'ws1') } })
  const onlyD1 = await connect(server, { auth: { token: mint('--sub', 'bob', '--space', 'ws1', '--doc', 'd1') } })
  const brief = await connect(server, { auth: { token: mint('--sub', 'cy', '--space', 'ws1', '--ttl', '1s') } })
  t.after(() => { writer.close(); onlyD1.close(); brief.close() })

  const denied = await call(onlyD1, 'space:join-batch', { spaces: [{ ...ws, docId: 'd1' }, { ...ws, docId: 'd2' }], clientVersion: VERSION })
  assert.equal(denied.error?.name, 'DOC_ACTION_DENIED')
  assert.equal((await call(onlyD1, 'space:load-doc', { ...ws, docId: 'd1' })).error?.name, 'NOT_IN_SPACE',
    'a join refused for one doc joins nothing')
  const other = await call(onlyD1, 'space:join-batch', { spaces: [{ spaceType: 'workspace', spaceId: 'elsewhere' }], clientVersion: VERSION })
  assert.equal(other.error?.name, 'SPACE_ACCESS_DENIED')

  await call(writer, 'space:join-batch', { spaces: [ws], clientVersion: VERSION })
  assert.equal((await call(brief, 'space:join-batch', { spaces: [{ ...ws, docId: 'd1' }], clientVersion: VERSION })).data.success, true)
  const toBrief = collect(brief, 'space:broadcast-doc-updates')
  const u1 = update((d) => d.getMap('m').set('k', 1))
  await call(writer, 'space:push-doc-update', { ...ws, docId: 'd1', update: b64(u1) })
  await waitFor('the update on the subscriber', () => toBrief.length === 1, [[brief, 'space:broadcast-doc-updates']])

  // Its token expires (1 s, and the 5 s leeway): the subscription ends.
  await until('the subscription ended', async () =>
    (await metric(server, 'yrelay_rejected_messages_total{reason="subscription_access_lost"}')) >= 1)
  const u2 = update((d) => { Y.applyUpdate(d, u1); d.getMap('m').set('k', 2) })
  const legacy = await connect(server, { auth: { token: mint('--sub', 'dan', '--space', 'ws1') } })
  t.after(() => legacy.close())
  await call(legacy, 'space:join', { ...ws, clientVersion: '0.26.0' })
  await call(legacy, 'space:load-doc', { ...ws, docId: 'd1' })
  const toLegacy = collect(legacy, 'space:broadcast-doc-updates')
  await call(writer, 'space:push-doc-update', { ...ws, docId: 'd1', update: b64(u2) })
  await waitFor('the update on a reader that still may read', () => toLegacy.length === 1, [[legacy, 'space:broadcast-doc-updates']])
  assert.equal(toBrief.length, 1, 'no broadcasts after read access is lost')
})

/** The update events of an SSE stream (`/v1/docs/{doc}/events`), applied to `doc`. */
async function sseClient (t, server, path, doc) {
  const controller = new AbortController()
  t.after(() => controller.abort())
  const response = await fetch(`${server.httpUrl}/v1/docs/${path}/events`, { signal: controller.signal })
  const reader = response.body.getReader()
  const decoder = new TextDecoder()
  let buffered = '';
  (async () => {
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ done: true }))
      if (done) return
      buffered += decoder.decode(value, { stream: true })
      let end
      while ((end = buffered.indexOf('\n\n')) >= 0) {
        const block = buffered.slice(0, end)
        buffered = buffered.slice(end + 2)
        const type = block.match(/^event: (.*)$/m)?.[1]
        const data = block.match(/^data: (.*)$/m)?.[1]
        if (type === 'sync') Y.applyUpdate(doc, unb64(JSON.parse(data).update), 'server')
        if (type === 'update') Y.applyUpdate(doc, unb64(data), 'server')
      }
    }
  })()
  doc.on('update', (u, origin) => {
    if (origin !== 'server') fetch(`${server.httpUrl}/v1/docs/${path}/updates`, { method: 'POST', body: u })
  })
}

test("AFFiNE 0.27.5's flow, bad payloads, and four transports converging on one document", async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const c = await connect(server)
  const legacy = await connect(server)
  t.after(() => { c.close(); legacy.close() })

  // Bad payloads: a clear BAD_REQUEST, nothing joined, the socket usable.
  const bad = [
    'not an object', {}, { spaces: 'x', clientVersion: VERSION }, { spaces: [ws] },
    { spaces: [{ ...ws, docId: '' }], clientVersion: VERSION }, { spaces: [{ spaceType: 'nope', spaceId: 'ws1' }], clientVersion: VERSION },
    { spaces: [{ ...ws, spaceId: '' }], clientVersion: VERSION }
  ]
  for (const payload of bad) {
    const answer = await call(c, 'space:join-batch', payload)
    assert.equal(answer.error?.name, 'BAD_REQUEST', JSON.stringify(payload))
    assert.ok(answer.error.message.length > 0)
  }
  assert.equal((await call(c, 'space:load-doc', { ...ws, docId: 'conv' })).error?.name, 'NOT_IN_SPACE')
  const badPush = await call(legacy, 'space:leave-batch', { ...ws, docIds: ['conv'] })
  assert.equal(badPush.error?.name, 'NOT_IN_SPACE')

  // As AFFiNE 0.27.5 connects: join the space without documents.
  assert.equal((await call(c, 'space:join-batch', { spaces: [ws], clientVersion: VERSION })).data.success, true)
  assert.equal((await call(legacy, 'space:join', { ...ws, clientVersion: '0.26.0' })).data.success, true)
  const invalidations = collect(c, 'space:broadcast-doc-invalidation')
  const seed = update((d) => d.getMap('m').set('legacy', 1))
  await call(legacy, 'space:push-doc-update', { ...ws, docId: 'conv', update: b64(seed) })
  await waitFor('an invalidation', () => invalidations.length > 0, [[c, 'space:broadcast-doc-invalidation']])
  const stamps = await call(c, 'space:load-doc-timestamps', { ...ws })
  assert.ok(stamps.data.conv > 0, JSON.stringify(stamps))
  const cDoc = new Y.Doc()
  const loaded = await call(c, 'space:load-doc', { ...ws, docId: 'conv', stateVector: b64(Y.encodeStateVector(cDoc)) })
  Y.applyUpdate(cDoc, unb64(loaded.data.missing), 'server')
  assert.equal(cDoc.getMap('m').get('legacy'), 1)
  // ...and subscribe to the document it opened.
  assert.equal((await call(c, 'space:join-batch', { spaces: [ws, { ...ws, docId: 'conv' }], clientVersion: VERSION })).data.success, true)
  c.on('space:broadcast-doc-updates', (e) => { for (const u of e.updates) Y.applyUpdate(cDoc, unb64(u), 'server') })
  cDoc.on('update', (u, origin) => {
    if (origin !== 'server') call(c, 'space:push-doc-update', { ...ws, docId: 'conv', update: b64(u) })
  })

  // The legacy socket, a y-websocket client and an SSE client on the same
  // document; each edits once, and all four end with every edit.
  const lDoc = new Y.Doc()
  Y.applyUpdate(lDoc, seed, 'server')
  legacy.on('space:broadcast-doc-updates', (e) => { for (const u of e.updates) Y.applyUpdate(lDoc, unb64(u), 'server') })
  await call(legacy, 'space:load-doc', { ...ws, docId: 'conv' })
  lDoc.on('update', (u, origin) => {
    if (origin !== 'server') call(legacy, 'space:push-doc-update', { ...ws, docId: 'conv', update: b64(u) })
  })
  const yDoc = new Y.Doc()
  const provider = new WebsocketProvider(server.wsUrl, 'ws1/conv', yDoc, { WebSocketPolyfill: WebSocket, disableBc: true })
  t.after(() => { provider.destroy(); yDoc.destroy() })
  await waitFor('y-websocket sync', () => provider.synced, [[provider, 'sync']])
  const sDoc = new Y.Doc()
  await sseClient(t, server, 'ws1/conv', sDoc)
  await waitFor('the SSE sync', () => sDoc.getMap('m').get('legacy') === 1, [[sDoc, 'update']])

  cDoc.getMap('m').set('batch', 2)
  lDoc.getMap('m').set('legacy26', 3)
  yDoc.getMap('m').set('ywebsocket', 4)
  sDoc.getMap('m').set('sse', 5)
  const all = (doc) => ['legacy', 'batch', 'legacy26', 'ywebsocket', 'sse'].every((k) => doc.getMap('m').has(k))
  for (const [name, doc] of [['batch', cDoc], ['0.26', lDoc], ['y-websocket', yDoc], ['SSE', sDoc]]) {
    await waitFor(`every edit on the ${name} client`, () => all(doc), [[doc, 'update']])
  }
  for (const doc of [lDoc, yDoc, sDoc]) assert.deepEqual(doc.getMap('m').toJSON(), cDoc.getMap('m').toJSON())

  // Presence between the batch client and the y-websocket client.
  const seenByC = new awarenessProtocol.Awareness(new Y.Doc())
  t.after(() => seenByC.destroy())
  c.on('space:broadcast-awareness-update', (e) =>
    awarenessProtocol.applyAwarenessUpdate(seenByC, unb64(e.awarenessUpdate), 'server'))
  provider.awareness.setLocalState({ user: 'y-websocket' })
  await waitFor("y-websocket's presence on the batch client",
    () => seenByC.getStates().get(provider.awareness.clientID)?.user === 'y-websocket',
    [[c, 'space:broadcast-awareness-update']])
  const mine = new awarenessProtocol.Awareness(new Y.Doc())
  t.after(() => mine.destroy())
  mine.setLocalState({ user: 'batch' })
  const awarenessUpdate = b64(awarenessProtocol.encodeAwarenessUpdate(mine, [mine.clientID]))
  await call(c, 'space:update-awareness', { ...ws, docId: 'conv', awarenessUpdate })
  await waitFor("the batch client's presence on y-websocket",
    () => provider.awareness.getStates().get(mine.clientID)?.user === 'batch',
    [[provider.awareness, 'change']])
})

test('invalidations of a busy space are coalesced, and the last change is always announced', async (t) => {
  const server = await new YrelayProcess().start()
  t.after(() => server.dispose())
  const writer = await connect(server)
  const member = await connect(server)
  t.after(() => { writer.close(); member.close() })
  for (const s of [writer, member]) await call(s, 'space:join-batch', { spaces: [ws], clientVersion: VERSION })
  const invalidations = collect(member, 'space:broadcast-doc-invalidation')
  const doc = new Y.Doc()
  let last = 0
  for (let i = 0; i < 20; i++) {
    const u = update((d) => { Y.applyUpdate(d, Y.encodeStateAsUpdate(doc)); d.getMap('m').set(`k${i}`, i) })
    Y.applyUpdate(doc, u)
    const ack = await call(writer, 'space:push-doc-update', { ...ws, docId: 'busy', update: b64(u) })
    last = ack.data.timestamp
  }
  await waitFor('the last change announced', () => invalidations.some((e) => e.timestamp >= last),
    [[member, 'space:broadcast-doc-invalidation']])
  assert.ok(invalidations.length < 20, `${invalidations.length} invalidations for 20 pushes`)
})
