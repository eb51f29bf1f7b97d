import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
const N = Number(process.argv[2] ?? 12000)
const url = process.argv[3]
const doc = new Y.Doc()
const updates = []
doc.on('update', (u) => updates.push(u))
doc.transact(() => {
  let arr = doc.getArray('root')
  for (let i = 0; i < N; i++) { const next = new Y.Array(); arr.insert(0, [next]); arr = next }
})
let r = await fetch(`${url}/v1/docs/deep/e${N}/updates`, { method: 'POST', body: updates[0] })
console.log(N, 'create', r.status)
const e = encoding.createEncoder()
encoding.writeVarUint(e, 0); encoding.writeVarUint(e, 1); encoding.writeVarUint(e, doc.clientID); encoding.writeVarUint(e, 1); encoding.writeVarUint(e, 0); encoding.writeVarUint(e, 1)
r = await fetch(`${url}/v1/docs/deep/e${N}/updates`, { method: 'POST', body: encoding.toUint8Array(e) }).catch(e => ({status: 'conn error ' + e.message}))
console.log('delete', r.status)
