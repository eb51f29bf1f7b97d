// What the browser tests share: Debian's chromium driven by playwright-core,
// yrelay serving the demo, and where screenshots go.
import assert from 'node:assert/strict'
import { existsSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import { YrelayProcess } from '../../../tests/interop/server.mjs'

const here = dirname(fileURLToPath(import.meta.url))
/** The chromium to drive, if there is one. */
export function executablePath () {
  const path = process.env.CHROMIUM ?? '/usr/bin/chromium'
  return existsSync(path) ? path : null
}

export const browserArgs = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync']

/** yrelay serving the demo at /app/, and a headless chromium; both end with the test. */
export async function demoAndBrowser (t) {
  assert.ok(executablePath(), 'a chromium to drive (apt-get install chromium, or set CHROMIUM)')
  const server = await new YrelayProcess(['--static-dir', join(here, '..', 'demo')]).start()
  t.after(() => server.dispose())
  const browser = await chromium.launch({ executablePath: executablePath(), args: browserArgs })
  t.after(() => browser.close())
  return { server, browser }
}

/** Where a screenshot named `name` goes (target/artifacts/, kept by CI). */
export function artifact (name) {
  const artifacts = join(here, '..', '..', '..', 'target', 'artifacts')
  mkdirSync(artifacts, { recursive: true })
  return join(artifacts, name)
}
