// Differential fuzzing against the real `yjs` package: the same mutated
// updates go to yrelay (POST) and to `Y.applyUpdate`; yrelay may accept only
// what yjs applies, and what it then serves must apply in yjs too; half the
// cases go to an empty document, half to one that holds every seed. A fixed
// seed makes every run the same; the hostile cases of issue 12 are in it.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { YrelayProcess } from './server.mjs'

const MUTATIONS = Number(process.env.FUZZ_MUTATIONS ?? 10000)
const SEED = Number(process.env.FUZZ_SEED ?? 12)
const CONCURRENCY = 16

/** mulberry32: a small seeded PRNG. */
function prng (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Valid updates of every content kind, written by yjs itself. */
function corpus () {
  const updates = []
  const capture = (build) => {
    const doc = new Y.Doc()
    doc.clientID = 1000 + updates.length // the same bytes on every run
    doc.on('update', (u) => updates.push(u))
    build(doc)
    updates.push(Y.encodeStateAsUpdate(doc))
  }
  capture((doc) => {
    const text = doc.getText('text')
    text.insert(0, 'hello wörld 👋')
    text.format(0, 5, { bold: true, link: { href: 'x' } })
    text.insertEmbed(3, { image: 'a.png' })
    text.delete(1, 2)
  })
  capture((doc) => {
    const map = doc.getMap('map')
    map.set('n', 1.5)
    map.set('i', -42)
    map.set('big', 2n ** 60n)
    map.set('s', 'str')
    map.set('b', new Uint8Array([1, 2, 3]))
    map.set('o', { a: [1, null, true, false, { b: 'c' }] })
    map.set('u', undefined)
    const inner = new Y.Map()
    map.set('inner', inner)
    inner.set('x', new Y.Array())
    map.delete('s')
  })
  capture((doc) => {
    const array = doc.getArray('array')
    array.push([1, 'two', { three: 3 }])
    const nested = new Y.Array()
    array.insert(1, [nested])
    nested.push([new Y.Text('t'), new Y.Map()])
    array.delete(0, 1)
  })
  capture((doc) => {
    const xml = doc.getXmlFragment('xml')
    const p = new Y.XmlElement('p')
    p.setAttribute('class', 'c')
    xml.insert(0, [p, new Y.XmlText('text')])
    p.insert(0, [new Y.XmlText('inner')])
  })
  capture((doc) => {
    doc.getMap('subdocs').set('child', new Y.Doc({ guid: 'child-guid' }))
  })
  return updates
}

/** Hand-made hostile updates (issue 12): deep values, unknown type refs. */
function hostile () {
  const item = (kind, content) => new Uint8Array([1, 1, 1, 0, kind, 1, 1, 97, ...content, 0])
  const deepAny = [1]
  for (let i = 0; i < 7000; i++) deepAny.push(117, 1)
  deepAny.push(126)
  const json = '['.repeat(5000) + ']'.repeat(5000)
  const jsonBytes = [...Buffer.from(json)]
  return [
    item(8, deepAny),
    item(2, [1, 0x90, 0x4e, ...jsonBytes]),
    item(7, [7]), item(7, [9]), item(7, [15]),
    item(9, [1, 103, 126]), // subdocument with null options
    item(11, []),
    item(7, [5, 1, 104]) // Y.XmlHook: yjs applies it, yrs cannot read it (refused)
  ]
}

const INTERESTING = [0, 1, 2, 7, 8, 9, 10, 15, 116, 117, 118, 119, 125, 126, 127, 0x7f, 0x80, 0xff]

function mutate (update, rnd) {
  let bytes = Array.from(update)
  const rounds = 1 + Math.floor(rnd() * 3)
  for (let r = 0; r < rounds; r++) {
    const at = Math.floor(rnd() * (bytes.length + 1))
    switch (Math.floor(rnd() * 6)) {
      case 0: if (at < bytes.length) bytes[at] ^= 1 << Math.floor(rnd() * 8); break
      case 1: if (at < bytes.length) bytes[at] = Math.floor(rnd() * 256); break
      case 2: bytes.splice(at, 0, Math.floor(rnd() * 256)); break
      case 3: bytes.splice(at, 1 + Math.floor(rnd() * 3)); break
      case 4: if (at < bytes.length) bytes[at] = INTERESTING[Math.floor(rnd() * INTERESTING.length)]; break
      default: {
        const from = Math.floor(rnd() * bytes.length)
        const slice = bytes.slice(from, from + 1 + Math.floor(rnd() * 8))
        bytes = [...bytes.slice(0, at), ...slice, ...bytes.slice(at)]
      }
    }
  }
  return new Uint8Array(bytes)
}

/** Whether yjs applies `update` to a document holding `base` (and can encode it back). */
function yjsApplies (update, base = null) {
  try {
    const doc = new Y.Doc()
    if (base) Y.applyUpdate(doc, base)
    Y.applyUpdate(doc, update)
    Y.encodeStateAsUpdate(doc)
    return true
  } catch {
    return false
  }
}

test(`yrelay accepts only updates yjs applies (${MUTATIONS} mutations, seed ${SEED})`, { timeout: 600000 }, async () => {
  const server = await new YrelayProcess(['--max-posts-per-sec', '1000000']).start() // 16 workers post from one address: the test is about validity, not the rate limit
  try {
    const rnd = prng(SEED)
    const seeds = corpus()
    const cases = [...seeds, ...hostile()]
    for (let i = 0; i < MUTATIONS; i++) cases.push(mutate(seeds[Math.floor(rnd() * seeds.length)], rnd))

    // Every other case goes to a document that already holds every seed.
    const base = Y.mergeUpdates(seeds)
    const counts = { cases: cases.length, yjsApplies: 0, yrelayAccepts: 0, acceptedYjsRejects: 0, servedYjsRejects: 0 }
    const wrong = []
    let next = 0
    const worker = async () => {
      while (next < cases.length) {
        const n = next++
        const update = cases[n]
        const seeded = n % 2 === 1
        if (seeded) {
          const response = await fetch(`${server.httpUrl}/v1/docs/fuzz/d${n}/updates`, { method: 'POST', body: base })
          assert.equal(response.status, 200)
        }
        const applies = yjsApplies(update, seeded ? base : null)
        if (applies) counts.yjsApplies++
        const response = await fetch(`${server.httpUrl}/v1/docs/fuzz/d${n}/updates`, { method: 'POST', body: update })
        const body = await response.json()
        if (response.status === 200) {
          counts.yrelayAccepts++
          if (!applies) {
            counts.acceptedYjsRejects++
            wrong.push(`case ${n} accepted but yjs cannot apply it: ${Buffer.from(update).toString('hex')}`)
          }
          const answer = await fetch(`${server.httpUrl}/v1/docs/fuzz/d${n}/update`)
          // 404: nothing visible (only deletions of unknown items, or nothing).
          if (answer.status === 200) {
            const served = new Uint8Array(await answer.arrayBuffer())
            if (!yjsApplies(served)) {
              counts.servedYjsRejects++
              wrong.push(`case ${n}: yjs cannot apply what yrelay serves: ${Buffer.from(served).toString('hex')}`)
            }
          }
        } else {
          assert.equal(response.status, 400, `case ${n}: ${JSON.stringify(body)}`)
          assert.equal(body.error.code, 'BAD_UPDATE')
        }
      }
    }
    await Promise.all(Array.from({ length: CONCURRENCY }, worker))
    console.log('differential fuzz:', JSON.stringify(counts))
    assert.deepEqual(wrong.slice(0, 8), [], `${wrong.length} disagreements`)
    for (const update of seeds) assert.ok(yjsApplies(update))
    assert.ok(counts.yrelayAccepts >= seeds.length, 'every valid seed is accepted')
    // The instance survived all of it.
    assert.equal((await fetch(`${server.httpUrl}/healthz`)).status, 200)
  } finally {
    await server.dispose()
  }
})
