// The inspector: spaces, documents (content live, connections and
// presence, history, actions) and the instance, over yrelay's public API.

import { ApiError, get, setToken, token } from './api.js'
import { clear, h } from './dom.js'
import { documentView } from './document.js'
import { instanceView } from './instance.js'
import { spaceView, spacesView } from './lists.js'

/** What a view leaves running (event streams, timers), stopped when it is left. */
export type Dispose = () => void

const main = document.getElementById('main') as HTMLElement
const signOut = document.getElementById('sign-out') as HTMLButtonElement
let dispose: Dispose = () => {}

signOut.addEventListener('click', () => { setToken(null); void route() })
window.addEventListener('hashchange', () => { void route() })

/** Shows an error where the view was: a sign-in form when the token is the problem. */
export function failed (error: unknown): void {
  if (error instanceof ApiError && error.unauthorized) {
    dispose()
    dispose = () => {}
    signIn(error)
    return
  }
  const message = error instanceof Error ? error.message : String(error)
  main.prepend(h('p', { class: 'error', role: 'alert' }, message))
}

function signIn (error: ApiError | null): void {
  const input = h('input', { type: 'password', name: 'token', placeholder: 'admin token', autocomplete: 'off', size: 40 })
  const form = h('form', { class: 'row' }, input, h('button', { type: 'submit' }, 'Sign in'))
  form.addEventListener('submit', event => {
    event.preventDefault()
    setToken(input.value.trim())
    void route()
  })
  clear(main,
    h('h1', {}, 'Sign in'),
    h('p', {}, 'The inspector needs an admin token: a token with access to every space, read-write (',
      h('code', {}, '{"space": "*", "doc": "*", "mode": "rw"}'), ').'),
    error && token() ? h('p', { class: 'error', role: 'alert' }, `${error.code}: ${error.message}`) : null,
    form)
  signOut.hidden = true
  input.focus()
}

async function route (): Promise<void> {
  dispose()
  dispose = () => {}
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent)
  clear(main, h('p', { class: 'muted' }, 'Loading…'))
  try {
    // Whether this token (or none, in open mode) may look at all.
    await get('/v1/spaces?limit=1')
    signOut.hidden = token() === null
    if (parts[0] === 's' && parts[1]) dispose = await spaceView(main, parts[1])
    else if (parts[0] === 'd' && parts[1] && parts[2]) dispose = await documentView(main, parts[1], parts.slice(2).join('/'))
    else if (parts[0] === 'instance') dispose = await instanceView(main)
    else dispose = await spacesView(main)
  } catch (error) {
    failed(error)
  }
}

void route()
