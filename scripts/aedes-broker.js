// A plain aedes 1.x broker (memory persistence, no cluster) for scripts/compare:
//   node scripts/aedes-broker.js PORT
// Uses the aedes that tests/cluster installs (`npm ci` in tests/cluster). Prints
// `aedes listening <port>` once it accepts connections.
'use strict'

const net = require('node:net')
const path = require('node:path')

async function main () {
  const port = Number(process.argv[2])
  if (!port) {
    console.error('usage: node scripts/aedes-broker.js PORT')
    process.exit(2)
  }
  const modules = path.join(__dirname, '..', 'tests', 'cluster', 'node_modules')
  const { Aedes } = await import(path.join(modules, 'aedes', 'aedes.js'))
  const broker = await Aedes.createBroker()
  const server = net.createServer(broker.handle)
  server.listen(port, '127.0.0.1', () => console.log(`aedes listening ${port}`))
  const stop = () => server.close(() => broker.close(() => process.exit(0)))
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
}

main().catch((err) => {
  console.error(`aedes failed: ${err && err.stack}`)
  process.exit(1)
})
