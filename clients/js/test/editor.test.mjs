// The rich-text demo (Tiptap with its collaboration extensions over an
// unmodified HocuspocusProvider) in two real browser pages against
// yrelay's /v1/hocuspocus: both type, both converge, both say "saved".
// Leaves a screenshot in target/artifacts/ for CI.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { artifact, demoAndBrowser } from './browser.mjs'

test('two browsers type into one Tiptap document over the Hocuspocus provider', async (t) => {
  const { server, browser } = await demoAndBrowser(t)
  const open = async (name) => {
    const page = await browser.newPage()
    page.on('pageerror', (e) => console.error(`${name}: ${e}`))
    await page.goto(`${server.httpUrl}/app/editor.html?doc=notes/today&name=${name}`)
    await page.waitForSelector('body[data-status="saved"]')
    return page
  }
  const ann = await open('ann')
  const bob = await open('bob')

  await ann.click('#editor .ProseMirror')
  await ann.keyboard.type('Hello from Ann. ')
  await bob.waitForFunction(() => window.editor.getText().includes('Hello from Ann.'))
  await bob.click('#editor .ProseMirror')
  await bob.keyboard.press('End')
  await bob.keyboard.type('And Bob.')
  const both = () => window.editor.getText().includes('Hello from Ann.') && window.editor.getText().includes('And Bob.')
  await ann.waitForFunction(both)
  await bob.waitForFunction(both)
  assert.equal(await ann.evaluate(() => window.editor.getText()), await bob.evaluate(() => window.editor.getText()))
  // Every keystroke is durable once the status says so.
  await ann.waitForSelector('body[data-status="saved"]')
  await bob.waitForSelector('body[data-status="saved"]')
  // Ann sees Bob's caret with his name.
  await ann.waitForSelector('.collaboration-carets__label', { state: 'attached' })
  assert.equal(await ann.textContent('.collaboration-carets__label'), 'bob')

  await ann.screenshot({ path: artifact('tiptap-hocuspocus-demo.png'), fullPage: true })

  // A y-websocket view of the same document (stored under notes/today).
  const response = await fetch(`${server.httpUrl}/v1/docs/notes/today/json`)
  assert.equal(response.status, 200)
  assert.match(JSON.stringify(await response.json()), /Hello from Ann/)
})
