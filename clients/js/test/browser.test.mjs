// The map-settings demo in two real browser pages (Debian's chromium driven
// by playwright-core): an edit in one shows up in the other, with presence.
// Leaves a screenshot in target/artifacts/ for CI.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { artifact, demoAndBrowser } from './browser.mjs'

test('two browsers edit the map settings together', async (t) => {
  const { server, browser } = await demoAndBrowser(t)
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

  await bob.screenshot({ path: artifact('map-settings-demo.png'), fullPage: true })

  // closing a page removes its presence for the others
  await bob.close()
  await ann.waitForSelector('.avatar[data-name="bob"]', { state: 'detached' })
})
