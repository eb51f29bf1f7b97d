// A rich-text document shared live between browsers: Tiptap with its
// collaboration extensions over an unmodified HocuspocusProvider, pointed
// at yrelay's /v1/hocuspocus. The status says "saved" only once yrelay has
// made every change durable (its sync statuses).
import { Editor } from '@tiptap/core'
import StarterKit from '@tiptap/starter-kit'
import Collaboration from '@tiptap/extension-collaboration'
import CollaborationCaret from '@tiptap/extension-collaboration-caret'
import { HocuspocusProvider } from '@hocuspocus/provider'
import * as Y from 'yjs'

const params = new URLSearchParams(location.search)
const name = params.get('name') ?? `guest-${Math.floor(Math.random() * 1000)}`
const palette = ['#e4572e', '#17bebb', '#76b041', '#ffc914', '#7768ae']
const color = palette[Math.floor(Math.random() * palette.length)]
const scheme = location.protocol === 'https:' ? 'wss' : 'ws'

const document_ = new Y.Doc()
const provider = new HocuspocusProvider({
  url: `${scheme}://${location.host}/v1/hocuspocus`,
  name: params.get('doc') ?? 'demo/notes',
  document: document_,
  token: params.get('token') ?? ''
})

const editor = new Editor({
  element: document.getElementById('editor'),
  extensions: [
    StarterKit.configure({ undoRedo: false }), // history is the CRDT's
    Collaboration.configure({ document: document_ }),
    CollaborationCaret.configure({ provider, user: { name, color } })
  ]
})

const status = document.getElementById('status')
function showStatus () {
  const state = !provider.isSynced ? 'connecting…' : provider.hasUnsyncedChanges ? 'saving…' : 'saved'
  status.textContent = state
  document.body.dataset.status = state
}
provider.on('synced', showStatus)
provider.on('unsyncedChanges', showStatus)
provider.on('status', showStatus)
window.editor = editor
