// What the Socket.IO tests share: a socket.io-client socket, acked calls,
// collected events, presence and captured Yjs updates.
import { io } from 'socket.io-client'
import * as Y from 'yjs'
import * as awarenessProtocol from 'y-protocols/awareness'

export const b64 = (bytes) => Buffer.from(bytes).toString('base64')
export const unb64 = (text) => new Uint8Array(Buffer.from(text, 'base64'))
export const ws = { spaceType: 'workspace', spaceId: 'ws1' }

/** A connected socket (websocket transport unless told otherwise). */
export async function connect (server, options = {}) {
  const socket = io(server.httpUrl, { transports: ['websocket'], reconnection: false, ...options })
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('connect_error', reject)
  })
  return socket
}

export const call = (socket, event, payload) => socket.timeout(10000).emitWithAck(event, payload)

/** Collects `event`s of a socket, to wait on. */
export function collect (socket, event) {
  const seen = []
  socket.on(event, (payload) => seen.push(payload))
  return seen
}

/** An awareness (y-protocols) with a local state, as AFFiNE's client keeps one. */
export function presence (t, state) {
  const awareness = new awarenessProtocol.Awareness(new Y.Doc())
  t.after(() => awareness.destroy())
  awareness.setLocalState(state)
  const encode = () => b64(awarenessProtocol.encodeAwarenessUpdate(awareness, [awareness.clientID]))
  return { awareness, id: awareness.clientID, encode }
}

/** Applies every awareness update a socket received to `awareness`. */
export function mirrorAwareness (socket, awareness) {
  socket.on('space:broadcast-awareness-update', (e) =>
    awarenessProtocol.applyAwarenessUpdate(awareness, unb64(e.awarenessUpdate), 'server'))
}

/** The update `fn` makes to a fresh document. */
export function update (fn) {
  const doc = new Y.Doc()
  let captured = null
  doc.on('update', (u) => { captured = u })
  fn(doc)
  return captured
}
