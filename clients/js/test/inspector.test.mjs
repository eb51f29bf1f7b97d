// The inspector in a real browser (Debian's chromium, playwright-core)
// against yrelay with tokens: two stock y-websocket clients edit a document
// while an admin watches it; blocks it, deletes and undeletes it, restores
// a version. Screenshots of each main view go to target/artifacts/.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { chromium } from 'playwright-core'
import { YrelayProcess } from '../../../tests/interop/server.mjs'
import { artifact, browserArgs, executablePath } from './browser.mjs'

const SECRET = 'inspector-secret-0123456789'
const b64url = (x) => Buffer.from(JSON.stringify(x)).toString('base64url')
function token (sub, access) {
  const head = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url({ sub, exp: Math.floor(Date.now() / 1000) + 3600, access })}`
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`
}
const ADMIN = token('root', [{ space: '*', doc: '*', mode: 'rw' }])
const member = (sub) => token(sub, [{ space: 'acme', doc: '*', mode: 'rw' }])

/** A stock y-websocket client on acme/notes, signed in as `name`, with presence. */
async function client (t, server, name, colour) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(server.wsUrl, 'acme/notes', doc, {
    WebSocketPolyfill: WebSocket, disableBc: true, params: { token: member(name) }
  })
  t.after(() => provider.destroy())
  provider.awareness.setLocalStateField('user', { name, colour })
  await new Promise(resolve => provider.once('sync', resolve))
  return { doc, provider, settings: doc.getMap('settings') }
}

/** Resolves with the next "permission denied" y-websocket reports (it only logs it). */
function nextPermissionDenied () {
  return new Promise(resolve => {
    const warn = console.warn
    console.warn = (...args) => {
      if (String(args[0]).startsWith('Permission denied')) {
        console.warn = warn
        resolve(String(args[0]))
      } else warn(...args)
    }
  })
}

test('an admin inspects a live document, its people and its history, and acts on it', async (t) => {
  assert.ok(executablePath(), 'a chromium to drive (apt-get install chromium, or set CHROMIUM)')
  const server = await new YrelayProcess(['--jwt-secret', SECRET]).start()
  t.after(() => server.dispose())
  const browser = await chromium.launch({ executablePath: executablePath(), args: browserArgs })
  t.after(() => browser.close())
  const api = (path, init = {}, tok = ADMIN) => fetch(`${server.httpUrl}${path}`, {
    ...init, headers: { ...(tok ? { Authorization: `Bearer ${tok}` } : {}), ...(init.headers ?? {}) }
  })

  const ann = await client(t, server, 'ann', '#d33')
  await client(t, server, 'bob', '#33d')
  ann.settings.set('zoom', 12)
  ann.settings.set('title', 'Harbour map')
  ann.doc.getText('notes').insert(0, 'low tide at six')
  const paragraph = new Y.XmlElement('paragraph')
  paragraph.setAttribute('align', 'left')
  paragraph.insert(0, [new Y.XmlText('Ahoy')])
  ann.doc.getXmlFragment('body').insert(0, [paragraph])

  // Without an admin token: nothing.
  for (const [tok, status] of [[null, 401], [member('bob'), 403]]) {
    for (const path of ['/v1/spaces', '/v1/docs/acme/notes/connections']) {
      assert.equal((await api(path, {}, tok)).status, status, `${path} with ${tok ? 'a member' : 'no'} token`)
    }
  }
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } })
  // Confirmations are accepted; a prompt (rename) is answered.
  page.on('dialog', dialog => dialog.type() === 'prompt' ? dialog.accept('Harbour notes') : dialog.accept())
  await page.goto(`${server.httpUrl}/inspect/`)
  await page.waitForSelector('h1:text("Sign in")')
  assert.equal(await page.locator('table').count(), 0, 'nothing is shown before signing in')
  await page.fill('input[name=token]', member('bob'))
  await page.click('button[type=submit]')
  await page.waitForSelector('[role=alert]')
  await page.waitForSelector('h1:text("Sign in")')
  assert.equal(await page.locator('table').count(), 0, 'a member token shows nothing either')
  await page.screenshot({ path: artifact('inspector-sign-in.png') })

  // Signed in as an admin: spaces, then the space's documents.
  await page.fill('input[name=token]', ADMIN)
  await page.click('button[type=submit]')
  await page.waitForSelector('tr:has(a:text-is("acme")) td:text-is("1")')
  await page.screenshot({ path: artifact('inspector-spaces.png') })
  await page.click('a:text-is("acme")')
  await page.fill('input[type=search]', 'NOT')
  await page.waitForSelector('tr:has(a:text-is("notes")) .tag:text("2 connected")')
  await page.screenshot({ path: artifact('inspector-space.png') })

  // The document, live: content, both clients and their presence.
  await page.click('a:text-is("notes")')
  await page.waitForSelector('.tree li[data-path-key="zoom"]:has-text("12")')
  const withZoom12 = Date.now()
  // Each type as what it is: text, and XML with its element and attributes.
  await page.waitForSelector('.tree li[data-path-key="notes"]:has-text("low tide at six"):has-text("text · 15")')
  await page.waitForSelector('.tree li[data-path-key="body"]:has-text("xml fragment · 1"):has-text(\'<paragraph align="left">\'):has-text("Ahoy")')
  await page.waitForSelector('[aria-label=Connections] tbody tr >> nth=1')
  const people = await page.locator('[aria-label=Connections] tbody').innerText()
  for (const expected of ['websocket', 'ann', 'bob', '"colour": "#d33"', '"colour": "#33d"']) {
    assert.ok(people.includes(expected), `${expected} in ${people}`)
  }
  ann.settings.set('zoom', 13)
  await page.waitForSelector('.tree li[data-path-key="zoom"]:has-text("13")')
  await page.screenshot({ path: artifact('inspector-document.png'), fullPage: true })

  // A version to go back to, then another edit.
  assert.equal((await api('/v1/docs/acme/notes/versions', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ label: 'before the storm' })
  })).status, 201)
  ann.settings.set('zoom', 14)
  await page.waitForSelector('.tree li[data-path-key="zoom"]:has-text("14")')

  // Block: the client's next update is refused.
  await page.click('button:text-is("Block")')
  await page.waitForSelector('.tag:text("blocked")')
  const denied = nextPermissionDenied()
  ann.settings.set('zoom', 99)
  assert.match(await denied, /blocked/)
  await page.click('button:text-is("Unblock")')
  await page.waitForSelector('button:text-is("Block")')

  // Rename (prompted).
  await page.click('button:text-is("Rename")')
  await page.waitForSelector('h1:text-is("Harbour notes (notes)")')

  // Restore the version (confirmed): the content goes back.
  await page.reload()
  await page.click('tr:has-text("before the storm") button:text-is("Restore")')
  await page.waitForSelector('.tree li[data-path-key="zoom"]:has-text("13")')
  // Two moments side by side: when the zoom was 12, and now (13 again).
  await page.fill('input[aria-label="First moment"]', await page.evaluate(
    ms => new Date(ms - new Date(ms).getTimezoneOffset() * 60000).toISOString().slice(0, 23), withZoom12))
  await page.click('button:text-is("Compare")')
  await page.waitForSelector('.side > div:nth-child(2) .tree li.changed[data-path-key="zoom"]:has-text("13")')
  assert.match(await page.locator('.side > div >> nth=0').innerText(), /zoom: 12/)
  await page.screenshot({ path: artifact('inspector-history.png'), fullPage: true })

  // The instance: both clients' connections, among its metrics.
  await page.goto(`${server.httpUrl}/inspect/#/instance`)
  await page.waitForSelector('.card[data-card="connections · websocket"] .value:text("2")')
  // A second sample gives the rates and the charts' first lines.
  await page.waitForSelector('.card[data-card="updates / s"] .value:not(:text("—"))')
  await page.screenshot({ path: artifact('inspector-instance.png'), fullPage: true })

  // Delete (confirmed) to the trash, and undelete.
  await page.goto(`${server.httpUrl}/inspect/#/d/acme/notes`)
  await page.click('button:text-is("Delete")')
  await page.waitForSelector('.tag:text("in the trash")')
  assert.equal((await api('/v1/docs/acme/notes')).status, 404)
  await page.click('button:text-is("Undelete")')
  await page.waitForSelector('.tree li[data-path-key="title"]:has-text("Harbour map")')

  // The document on a phone-sized window.

  const phone = await browser.newPage({ viewport: { width: 390, height: 844 } })
  await phone.goto(`${server.httpUrl}/inspect/`)
  await phone.fill('input[name=token]', ADMIN)
  await phone.click('button[type=submit]')
  await phone.waitForSelector('h1:text("Spaces")')
  await phone.goto(`${server.httpUrl}/inspect/#/d/acme/notes`)
  await phone.waitForSelector('.tree li[data-path-key="zoom"]')
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth)
  assert.ok(overflow <= 0, `the page fits a phone (${overflow} px too wide)`)
  await phone.screenshot({ path: artifact('inspector-phone.png'), fullPage: true })
})
