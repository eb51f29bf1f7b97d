// A "map settings" editor shared live between browsers with SseProvider:
// every field is a key of one Y.Map; presence shows who is here.
import * as Y from 'yjs'
import { SseProvider } from '../dist/index.js'

const params = new URLSearchParams(location.search)
const room = params.get('doc') ?? 'demo/map-settings'
const name = params.get('name') ?? `guest-${Math.floor(Math.random() * 1000)}`
const palette = ['#e4572e', '#17bebb', '#76b041', '#ffc914', '#2e282a', '#7768ae']
const colour = palette[Math.floor(Math.random() * palette.length)]

const fields = ['lat', 'lng', 'zoom', 'color-roads', 'color-water', 'color-parks']
const defaults = { lat: 52.52, lng: 13.4, zoom: 10, 'color-roads': '#888888', 'color-water': '#3a7bd5', 'color-parks': '#4caf50' }
const doc = new Y.Doc()
// A new document starts from the defaults, created once on the server (not
// inserted by every browser, which would make them fight).
const provider = new SseProvider(location.origin, room, doc, { seed: { json: defaults, root: 'settings' } })
const settings = doc.getMap('settings')

function render () {
  for (const key of fields) {
    const input = document.getElementById(key)
    const value = settings.get(key) ?? defaults[key]
    if (document.activeElement !== input) input.value = value
  }
  document.getElementById('zoom-value').textContent = settings.get('zoom') ?? defaults.zoom
}

for (const key of fields) {
  document.getElementById(key).addEventListener('input', (event) => {
    const input = event.target
    settings.set(key, input.type === 'color' ? input.value : Number(input.value))
  })
}
settings.observe(render)

function renderUsers () {
  const users = document.getElementById('users')
  users.replaceChildren(...[...provider.awareness.getStates().values()]
    .filter((state) => state.user)
    .map(({ user }) => {
      const avatar = document.createElement('span')
      avatar.className = 'avatar'
      avatar.title = user.name
      avatar.dataset.name = user.name
      avatar.style.background = user.colour
      avatar.textContent = user.name.slice(0, 1).toUpperCase()
      return avatar
    }))
}
provider.awareness.setLocalStateField('user', { name, colour })
provider.awareness.on('change', renderUsers)
renderUsers()

provider.on('status', ({ status }) => { document.getElementById('status').textContent = status })
provider.on('sync', () => {
  document.body.dataset.synced = 'true'
  render()
})
render()
