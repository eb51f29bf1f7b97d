// The map-settings demo in two real browser pages (Debian's chromium driven
// by playwright-core): an edit in one shows up in the other, with presence.
// Leaves a screenshot in target/artifacts/ for CI.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import { YrelayProcess } from '../../../tests/interop/server.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..', '..', '..')
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium'

test('two browsers edit the map settings together', async (t) => {
  assert.ok(existsSync(executablePath), `a browser at ${executablePath} (apt-get install chromium, or set CHROMIUM)`)
  const server = await new YrelayProcess(['--static-dir', join(here, '..', 'demo')]).start()
  t.after(() => server.dispose())
  const browser = await chromium.launch({
    executablePath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync']
  })
  t.after(() => browser.close())
  const open = async (name) => {
    const page = await browser.newPage()
    await page.goto(`${server.httpUrl}/app/index.html?doc=maps/demo&name=${name}`)
    await page.waitForSelector('body[data-synced="true"]')
    return page
  }
  const ann = await open('ann')
  const bob = await open('bob')

  await ann.evaluate(() => {
    const zoom = document.getElementById('zoom')
    zoom.value = '15'
    zoom.dispatchEvent(new Event('input'))
    const water = document.getElementById('color-water')
    water.value = '#112233'
    water.dispatchEvent(new Event('input'))
  })
  await bob.waitForFunction(() => document.getElementById('zoom').value === '15')
  await bob.waitForFunction(() => document.getElementById('color-water').value === '#112233')
  await bob.waitForSelector('.avatar[data-name="ann"]')
  await ann.waitForSelector('.avatar[data-name="bob"]')
  assert.equal(await bob.textContent('#zoom-value'), '15')

  const artifacts = join(root, 'target', 'artifacts')
  mkdirSync(artifacts, { recursive: true })
  await bob.screenshot({ path: join(artifacts, 'map-settings-demo.png'), fullPage: true })

  // closing a page removes its presence for the others
  await bob.close()
  await ann.waitForSelector('.avatar[data-name="bob"]', { state: 'detached' })
})
