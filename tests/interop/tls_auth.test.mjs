// Native TLS (wss://, https://) with a self-signed certificate, and tokens
// carried the ways browsers can: the `yauth-<jwt>` WebSocket subprotocol
// and `?token=`; stock y-websocket clients throughout.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { readFileSync } from 'node:fs'
import https from 'node:https'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { YrelayProcess, waitFor, yrelayBin } from './server.mjs'

const SECRET = 'interop-secret'

function selfSigned (dir) {
  const key = join(dir, 'key.pem')
  const cert = join(dir, 'cert.pem')
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
    '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { stdio: 'ignore' })
  return { key, cert }
}

function mint (...args) {
  return execFileSync(yrelayBin, ['token', ...args], { env: { ...process.env, YRELAY_JWT_SECRET: SECRET } })
    .toString().trim()
}

/** A `ws` WebSocket that trusts `ca` (for the self-signed certificate). */
function trusting (ca) {
  return class extends WebSocket {
    constructor (url, protocols) { super(url, protocols, { ca }) }
  }
}

function get (url, ca, headers = {}) {
  return new Promise((resolve, reject) => {
    https.get(url, { ca, headers }, (res) => {
      let body = ''
      res.on('data', (c) => { body += c })
      res.on('end', () => resolve({ status: res.statusCode, body }))
    }).on('error', reject)
  })
}

test('wss:// with a self-signed certificate, tokens by subprotocol and by query', async (t) => {
  const server = new YrelayProcess()
  const { key, cert } = selfSigned(server.dir)
  server.args = ['--tls-cert', cert, '--tls-key', key, '--jwt-secret', SECRET]
  await server.start()
  const ca = readFileSync(cert)
  t.after(() => server.dispose())
  assert.match(server.wsUrl, /^wss:\/\//)

  const health = await get(`${server.httpUrl}/healthz`, ca)
  assert.equal(health.status, 200)
  const denied = await get(`${server.httpUrl}/v1/docs/team/plan`, ca)
  assert.equal(denied.status, 401)
  assert.equal(JSON.parse(denied.body).error.code, 'AUTHENTICATION_REQUIRED')

  const WS = trusting(ca)
  const writer = new Y.Doc()
  const a = new WebsocketProvider(server.wsUrl, 'team/plan', writer, {
    WebSocketPolyfill: WS, disableBc: true, protocols: [`yauth-${mint('--sub', 'ann', '--space', 'team')}`]
  })
  const reader = new Y.Doc()
  const b = new WebsocketProvider(server.wsUrl, 'team/plan', reader, {
    WebSocketPolyfill: WS, disableBc: true, params: { token: mint('--sub', 'bob', '--space', 'team', '--read-only') }
  })
  const denials = []
  t.after(() => { a.destroy(); b.destroy(); writer.destroy(); reader.destroy() })
  await waitFor('both synced', () => a.synced && b.synced, [[a, 'sync'], [b, 'sync']])

  writer.getMap('settings').set('zoom', 11)
  await waitFor('the reader sees the write', () => reader.getMap('settings').get('zoom') === 11, [[reader, 'update']])

  // The reader's edit is refused (permission-denied auth message) and reaches nobody.
  const origWarn = console.warn
  console.warn = (...args) => { denials.push(args.join(' ')) }
  t.after(() => { console.warn = origWarn })
  reader.getMap('settings').set('zoom', 3)
  const socket = b.ws
  await waitFor('permission denied', () => denials.some((d) => d.includes('read-only')), [[socket, 'message']])
  writer.getMap('settings').set('center', 'Berlin')
  await waitFor('the writer\'s next edit', () => reader.getMap('settings').get('center') === 'Berlin', [[reader, 'update']])
  assert.equal(writer.getMap('settings').get('zoom'), 11, 'the read-only edit never reached the writer')

  // A bad token: the upgrade succeeds, then 1008 with the reason.
  const closed = await new Promise((resolve) => {
    const ws = new WS(`${server.wsUrl}/team/plan?token=nonsense`)
    ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() }))
  })
  assert.equal(closed.code, 1008)
  assert.match(closed.reason, /not valid/)
})
