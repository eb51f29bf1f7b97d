import * as Y from 'yjs'
const N = Number(process.argv[2] ?? 12000)
const url = process.argv[3]
const doc = new Y.Doc()
const updates = []
doc.on('update', (u) => updates.push(u))
doc.transact(() => {
  let arr = doc.getArray('root')
  for (let i = 0; i < N; i++) { const next = new Y.Array(); arr.insert(0, [next]); arr = next }
})
let r = await fetch(`${url}/v1/docs/deep/d${N}/updates`, { method: 'POST', body: updates[0] })
console.log(N, 'create', r.status)
const before = updates.length
try { doc.getArray('root').delete(0, 1); console.log('yjs deleted') } catch (e) { console.log('yjs delete threw', e.message) }
if (updates.length > before) {
r = await fetch(`${url}/v1/docs/deep/d${N}/updates`, { method: 'POST', body: updates[updates.length - 1] }).catch(e => ({status: 'conn error ' + e.message}))
console.log('delete', r.status)
}
