/**
 * SseProvider: syncs a Y.Doc with a yrelay server over Server-Sent Events
 * (server → client) and HTTP POST (client → server).
 *
 * Each request stands alone, so it works where WebSockets fail and behind
 * load balancers that send the stream and the POSTs to different instances.
 *
 * - Handshake: the stream opens with the local state vector; the server
 *   answers with its diff and its state vector; the provider then POSTs the
 *   local diff against that state vector (offline edits go up).
 * - Local updates go through an outbox, in order, kept until the server
 *   acknowledges them (durable) and retried with backoff; pending updates
 *   are merged into one POST.
 * - The stream resumes with `Last-Event-ID` (exactly the missed updates, on
 *   any instance).
 * - Awareness over POST + SSE; cross-tab sync over BroadcastChannel.
 *
 * Seeding a document from JSON: do not have each client insert the initial
 * values (every client's inserts are distinct CRDT operations, so the
 * values end up duplicated or fighting). Give the provider a `seed`: before
 * it first connects it asks the server's one-time JSON import to create the
 * document; the server creates it exactly once (the first client wins, the
 * others get 409 and simply sync), so every client starts from one history.
 */
import * as Y from 'yjs'
import * as awarenessProtocol from 'y-protocols/awareness'
import { Observable } from 'lib0/observable'

export interface SseProviderOptions {
  /** Sent as `Authorization: Bearer` on every request. */
  token?: string
  /** An existing Awareness instance (one is created otherwise). */
  awareness?: awarenessProtocol.Awareness
  /** Connect at once (default true). */
  connect?: boolean
  /** Sync with other tabs of the same origin (default true where available). */
  broadcastChannel?: boolean
  /** Longest wait between retries, ms (default 5000). */
  maxBackoffMs?: number
  /** A fetch implementation (default: the global one). */
  fetch?: typeof fetch
  /**
   * Initial content for a document that does not exist yet: created once,
   * server-side, through the one-time JSON import (objects become Y.Map,
   * arrays Y.Array) under the root map `root` (default "root").
   */
  seed?: { json: Record<string, unknown>, root?: string }
}

export type Status = 'disconnected' | 'connecting' | 'connected'

const toBase64 = (bytes: Uint8Array): string => {
  let s = ''
  for (const b of bytes) s += String.fromCharCode(b)
  return btoa(s)
}
const fromBase64 = (text: string): Uint8Array => Uint8Array.from(atob(text), (c) => c.charCodeAt(0))
const toBase64Url = (bytes: Uint8Array): string => toBase64(bytes).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

interface SseEvent { event: string, data: string, id?: string }

export class SseProvider extends Observable<string> {
  readonly doc: Y.Doc
  readonly awareness: awarenessProtocol.Awareness
  readonly url: string
  synced = false
  status: Status = 'disconnected'
  /** Cursor of the last update received (resume point). */
  lastEventId: string | undefined

  private readonly token: string | undefined
  private seed: SseProviderOptions['seed']
  private readonly fetch: typeof fetch
  private readonly maxBackoffMs: number
  private shouldConnect = false
  private stream: AbortController | undefined
  private outbox: Uint8Array[] = []
  private flushing = false
  private channel: BroadcastChannel | undefined
  private readonly onDocUpdate: (update: Uint8Array, origin: unknown) => void
  private readonly onAwarenessUpdate: (changes: { added: number[], updated: number[], removed: number[] }, origin: unknown) => void
  private readonly onUnload = (): void => {
    // Tell the others this client is gone before the page goes.
    awarenessProtocol.removeAwarenessStates(this.awareness, [this.doc.clientID], 'window unload')
  }

  constructor (baseUrl: string, room: string, doc: Y.Doc, options: SseProviderOptions = {}) {
    super()
    this.doc = doc
    this.url = `${baseUrl.replace(/\/$/, '')}/v1/docs/${room}`
    this.token = options.token
    this.seed = options.seed
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis)
    this.maxBackoffMs = options.maxBackoffMs ?? 5000
    this.awareness = options.awareness ?? new awarenessProtocol.Awareness(doc)
    this.onDocUpdate = (update, origin) => {
      if (origin === this) return
      this.channel?.postMessage({ type: 'update', update })
      this.enqueue(update)
    }
    this.onAwarenessUpdate = ({ added, updated, removed }, origin) => {
      if (origin === this) return
      const changed = added.concat(updated, removed)
      const update = awarenessProtocol.encodeAwarenessUpdate(this.awareness, changed)
      this.channel?.postMessage({ type: 'awareness', update })
      void this.post('awareness', update).catch(() => {})
    }
    doc.on('update', this.onDocUpdate)
    this.awareness.on('update', this.onAwarenessUpdate)
    if ((options.broadcastChannel ?? true) && typeof BroadcastChannel !== 'undefined') {
      this.channel = new BroadcastChannel(this.url)
      this.channel.onmessage = (message: MessageEvent) => {
        const { type, update } = message.data as { type: string, update: Uint8Array }
        if (type === 'update') Y.applyUpdate(this.doc, update, this)
        if (type === 'awareness') awarenessProtocol.applyAwarenessUpdate(this.awareness, update, this)
      }
    }
    if (typeof window !== 'undefined') window.addEventListener('pagehide', this.onUnload)
    if (options.connect ?? true) this.connect()
  }

  /** Updates waiting for the server's acknowledgement. */
  get pending (): number {
    return this.outbox.length
  }

  connect (): void {
    if (this.shouldConnect) return
    this.shouldConnect = true
    void this.run()
    void this.flush()
  }

  disconnect (): void {
    this.shouldConnect = false
    this.stream?.abort()
    this.setStatus('disconnected')
  }

  destroy (): void {
    if (typeof window !== 'undefined') window.removeEventListener('pagehide', this.onUnload)
    awarenessProtocol.removeAwarenessStates(this.awareness, [this.doc.clientID], 'destroy')
    this.disconnect()
    this.doc.off('update', this.onDocUpdate)
    this.awareness.off('update', this.onAwarenessUpdate)
    this.channel?.close()
    super.destroy()
  }

  private setStatus (status: Status): void {
    if (this.status !== status) {
      this.status = status
      this.emit('status', [{ status }])
    }
  }

  private headers (extra: Record<string, string> = {}): Record<string, string> {
    return this.token ? { ...extra, authorization: `Bearer ${this.token}` } : extra
  }

  private async post (what: string, body: Uint8Array): Promise<Response> {
    return await this.fetch(`${this.url}/${what}`, {
      method: 'POST',
      // awareness must survive the page closing (small bodies only)
      keepalive: what === 'awareness',
      headers: this.headers({ 'content-type': 'application/octet-stream' }),
      body: body as Uint8Array<ArrayBuffer>
    })
  }

  /**
   * Creates the document from the seed unless it exists: 201 (we created
   * it) and 409 (it exists) both end the seeding; anything else is retried.
   */
  private async plant (): Promise<void> {
    if (!this.seed) return
    const root = encodeURIComponent(this.seed.root ?? 'root')
    const response = await this.fetch(`${this.url}/import?root=${root}`, {
      method: 'POST',
      headers: this.headers({ 'content-type': 'application/json' }),
      body: JSON.stringify(this.seed.json)
    })
    if (response.status !== 201 && response.status !== 409) {
      throw new Error(`seeding: HTTP ${response.status}`)
    }
    this.seed = undefined
    this.emit('seeded', [{ created: response.status === 201 }])
  }

  /** Keeps the event stream open while connected, reconnecting with backoff. */
  private async run (): Promise<void> {
    let backoff = 100
    while (this.shouldConnect) {
      this.setStatus('connecting')
      const controller = new AbortController()
      this.stream = controller
      try {
        await this.plant()
        const sv = toBase64Url(Y.encodeStateVector(this.doc))
        const headers = this.headers(this.lastEventId ? { 'last-event-id': this.lastEventId } : {})
        const response = await this.fetch(`${this.url}/events?sv=${sv}`, { headers, signal: controller.signal })
        if (!response.ok || !response.body) throw new Error(`event stream: HTTP ${response.status}`)
        this.setStatus('connected')
        backoff = 100
        for await (const event of readEvents(response.body)) this.receive(event)
      } catch {
        // dropped or refused: retry below
      }
      if (!this.shouldConnect) break
      this.setStatus('connecting')
      await sleep(backoff)
      backoff = Math.min(backoff * 2, this.maxBackoffMs)
    }
  }

  private receive (event: SseEvent): void {
    if (event.event === 'sync') {
      const { update, stateVector } = JSON.parse(event.data) as { update: string, stateVector: string }
      Y.applyUpdate(this.doc, fromBase64(update), this)
      if (event.id) this.lastEventId = event.id
      // What the server misses of ours (offline edits) goes up.
      const missing = Y.encodeStateAsUpdate(this.doc, fromBase64(stateVector))
      if (missing.length > 2) this.enqueue(missing)
      if (!this.synced) {
        this.synced = true
        this.emit('sync', [true])
        this.emit('synced', [true])
      }
    } else if (event.event === 'update') {
      Y.applyUpdate(this.doc, fromBase64(event.data), this)
      if (event.id) this.lastEventId = event.id
    } else if (event.event === 'awareness') {
      awarenessProtocol.applyAwarenessUpdate(this.awareness, fromBase64(event.data), this)
    } else if (event.event === 'deleted') {
      // The document was deleted on the server: stop (reconnecting would
      // write this copy back). The app decides what to do next.
      this.disconnect()
      this.emit('deleted', [])
    }
  }

  private enqueue (update: Uint8Array): void {
    this.outbox.push(update)
    void this.flush()
  }

  /** Sends the outbox in order; nothing leaves it before the server acknowledged it. */
  private async flush (): Promise<void> {
    if (this.flushing) return
    this.flushing = true
    let backoff = 100
    try {
      while (this.outbox.length > 0 && this.shouldConnect) {
        const count = this.outbox.length
        const merged = count === 1 ? this.outbox[0] : Y.mergeUpdates(this.outbox.slice(0, count))
        let response: Response | undefined
        try {
          response = await this.post('updates', merged)
        } catch {
          response = undefined
        }
        if (response?.ok) {
          this.outbox.splice(0, count)
          backoff = 100
          this.emit('acknowledged', [await response.json()])
        } else if (response && response.status >= 400 && response.status < 500 && response.status !== 429) {
          // The server refused the update itself: retrying cannot help.
          this.outbox.splice(0, count)
          this.emit('rejected', [{ status: response.status, body: await response.text() }])
        } else {
          await sleep(backoff)
          backoff = Math.min(backoff * 2, this.maxBackoffMs)
        }
      }
    } finally {
      this.flushing = false
    }
  }
}

/** Parses a `text/event-stream` body into events (comments skipped). */
async function * readEvents (body: ReadableStream<Uint8Array>): AsyncGenerator<SseEvent> {
  const reader = body.getReader()
  const decoder = new TextDecoder()
  let buffer = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return
    buffer += decoder.decode(value, { stream: true })
    let end: number
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      const event: SseEvent = { event: 'message', data: '' }
      let fields = 0
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue
        const colon = line.indexOf(':')
        const name = colon < 0 ? line : line.slice(0, colon)
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '')
        if (name === 'event') event.event = value
        else if (name === 'data') event.data += value
        else if (name === 'id') event.id = value
        else continue
        fields++
      }
      if (fields > 0) yield event
    }
  }
}
