// Does a server's fan-out converge for real yjs clients? Not a test: the
// check behind a benchmark table's "converged" column, with the stock
// clients (yjs + y-websocket). One writer pushes UPDATES items at RATE/s into
// the Y.Array 'seq'; READERS readers; once every reader has them (or 20 s),
// each reader is compared with the writer: items, state vector, whole state.
//
//   node tests/interop/converge.mjs 'ws://127.0.0.1:4964/d/{room}/ws' 10 2000 500   # y-sweet
//   node tests/interop/converge.mjs 'ws://127.0.0.1:4963' 10 2000 500               # y-websocket
//
// The URL is the provider's server URL ({room} replaced); the room is appended.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [template, readerCount, updates, rate] = [process.argv[2], +process.argv[3], +process.argv[4], +process.argv[5]]
if (!template || !(readerCount > 0) || !(updates > 0) || !(rate > 0)) {
  console.error('usage: node converge.mjs URL READERS UPDATES RATE')
  process.exit(2)
}
const room = `converge${Date.now()}`
const url = template.replace('{room}', room)

function open () {
  return new Promise(resolve => {
    const doc = new Y.Doc()
    const provider = new WebsocketProvider(url, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
    provider.on('sync', synced => synced && resolve({ doc, provider }))
  })
}
const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i])

const writer = await open()
const readers = await Promise.all(Array.from({ length: readerCount }, open))
const seq = writer.doc.getArray('seq')
for (let i = 0; i < updates; i++) {
  seq.push([Date.now() * 1000 + i])
  await new Promise(resolve => setTimeout(resolve, 1000 / rate))
}
const deadline = Date.now() + 20000
while (Date.now() < deadline && readers.some(r => r.doc.getArray('seq').length < updates)) {
  await new Promise(resolve => setTimeout(resolve, 50))
}
const items = JSON.stringify(seq.toArray())
const stateVector = Y.encodeStateVector(writer.doc)
const state = Y.encodeStateAsUpdate(writer.doc)
const report = { room, readers: readerCount, updates, sameItems: 0, sameStateVector: 0, sameState: 0, differences: [] }
for (const { doc } of readers) {
  const same = {
    items: JSON.stringify(doc.getArray('seq').toArray()) === items,
    stateVector: equal(Y.encodeStateVector(doc), stateVector),
    state: equal(Y.encodeStateAsUpdate(doc), state)
  }
  report.sameItems += same.items
  report.sameStateVector += same.stateVector
  report.sameState += same.state
  if (!same.state && report.differences.length < 3) {
    report.differences.push({
      items: doc.getArray('seq').length,
      writerItems: seq.length,
      clients: [...Y.decodeStateVector(Y.encodeStateVector(doc))],
      writerClients: [...Y.decodeStateVector(stateVector)]
    })
  }
}
console.log(JSON.stringify(report, null, 1))
process.exit(report.sameState === readerCount ? 0 : 1)
