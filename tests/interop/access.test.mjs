// One access decision on every transport: the same tokens asked the same
// questions over WebSocket, SSE, REST and Socket.IO get the same answers.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import WebSocket from 'ws'
import { io } from 'socket.io-client'
import * as Y from 'yjs'
import { YrelayProcess } from './server.mjs'

const SECRET = 'matrix-secret-0123456789'
const b64url = (x) => Buffer.from(typeof x === 'string' ? x : JSON.stringify(x)).toString('base64url')
function sign (claims) {
  const head = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`
}
const now = () => Math.floor(Date.now() / 1000)
const token = (sub, access = [], extra = {}) => sign({ sub, exp: now() + 3600, access, ...extra })

const TOKENS = {
  'one doc, read-only': token('ann', [{ space: 'team', doc: 'plan', mode: 'ro' }]),
  'every space': token('root', [{ space: '*', doc: '*', mode: 'rw' }]),
  'alice herself': token('alice'),
  'a grant on @alice': token('bob', [{ space: '@alice', doc: '*', mode: 'rw' }]),
  expired: token('ann', [{ space: '*', doc: '*', mode: 'rw' }], { exp: now() - 3600 }),
  'not valid yet': token('ann', [{ space: '*', doc: '*', mode: 'rw' }], { nbf: now() + 3600 }),
  'empty subject': token('', [{ space: '*', doc: '*', mode: 'rw' }])
}
const DOCS = ['team/plan', 'team/other', '@alice/notes']

function update () {
  const doc = new Y.Doc()
  doc.getMap('m').set('k', Math.random())
  return Y.encodeStateAsUpdate(doc)
}

/** Socket.IO's (spaceType, spaceId) of a `{space}/{doc}`. */
function sioSpace (path) {
  const [space, docId] = path.split('/')
  return space.startsWith('@')
    ? { spaceType: 'userspace', spaceId: space.slice(1), docId }
    : { spaceType: 'workspace', spaceId: space, docId }
}

const ask = {
  async wsRead (server, path, tok) {
    const socket = new WebSocket(`${server.wsUrl}/${path}?token=${tok}`)
    return new Promise((resolve) => {
      socket.once('message', () => { socket.terminate(); resolve('allowed') })
      socket.once('close', () => resolve('denied'))
      socket.once('error', () => resolve('denied'))
    })
  },
  async sseRead (server, path, tok) {
    const controller = new AbortController()
    const response = await fetch(`${server.httpUrl}/v1/docs/${path}/events?token=${tok}`, { signal: controller.signal })
    controller.abort()
    return response.status === 200 ? 'allowed' : 'denied'
  },
  async restRead (server, path, tok) {
    const response = await fetch(`${server.httpUrl}/v1/docs/${path}/update`, { headers: { authorization: `Bearer ${tok}` } })
    return response.status === 200 ? 'allowed' : 'denied'
  },
  async postWrite (server, path, tok) {
    const response = await fetch(`${server.httpUrl}/v1/docs/${path}/updates`, {
      method: 'POST', body: update(), headers: { authorization: `Bearer ${tok}` }
    })
    return response.status === 200 ? 'allowed' : 'denied'
  },
  async sioRead (server, path, tok) {
    return sio(server, tok, async (socket, space) => {
      const answer = await socket.timeout(10000).emitWithAck('space:load-doc', space)
      return answer.data ? 'allowed' : 'denied'
    }, path)
  },
  async sioWrite (server, path, tok) {
    return sio(server, tok, async (socket, space) => {
      const answer = await socket.timeout(10000).emitWithAck('space:push-doc-update', { ...space, update: Buffer.from(update()).toString('base64') })
      return answer.data?.accepted ? 'allowed' : 'denied'
    }, path)
  }
}

async function sio (server, tok, then, path) {
  const socket = io(server.httpUrl, { transports: ['websocket'], reconnection: false, auth: { token: tok } })
  try {
    const connected = await new Promise((resolve) => {
      socket.once('connect', () => resolve(true))
      socket.once('connect_error', () => resolve(false))
    })
    if (!connected) return 'denied'
    const { docId, ...space } = sioSpace(path)
    const joined = await socket.timeout(10000).emitWithAck('space:join', { ...space, clientVersion: '0.26.0' })
    if (!joined.data?.success) return 'denied'
    return await then(socket, { ...space, docId })
  } finally {
    socket.disconnect()
  }
}

test('the same tokens get the same answers on every transport', { timeout: 300000 }, async (t) => {
  const server = await new YrelayProcess(['--jwt-secret', SECRET]).start()
  t.after(() => server.dispose())
  // Every document exists (so a read answers 200, not 404).
  for (const path of DOCS) {
    assert.equal(await ask.postWrite(server, path, TOKENS['every space']), 'allowed')
  }
  const expected = {
    'one doc, read-only': { read: ['team/plan'], write: [] },
    'every space': { read: DOCS, write: DOCS },
    'alice herself': { read: ['@alice/notes'], write: ['@alice/notes'] },
    'a grant on @alice': { read: ['@alice/notes'], write: ['@alice/notes'] },
    expired: { read: [], write: [] },
    'not valid yet': { read: [], write: [] },
    'empty subject': { read: [], write: [] }
  }
  const wrong = []
  for (const [name, tok] of Object.entries(TOKENS)) {
    for (const path of DOCS) {
      const read = expected[name].read.includes(path) ? 'allowed' : 'denied'
      const write = expected[name].write.includes(path) ? 'allowed' : 'denied'
      const answers = {
        wsRead: await ask.wsRead(server, path, tok),
        sseRead: await ask.sseRead(server, path, tok),
        restRead: await ask.restRead(server, path, tok),
        sioRead: await ask.sioRead(server, path, tok),
        postWrite: await ask.postWrite(server, path, tok),
        sioWrite: await ask.sioWrite(server, path, tok)
      }
      for (const [question, answer] of Object.entries(answers)) {
        const want = question.endsWith('Read') ? read : write
        if (answer !== want) wrong.push(`${name} ${path} ${question}: ${answer}, expected ${want}`)
      }
    }
  }
  assert.deepEqual(wrong, [])
})
