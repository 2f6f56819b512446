// A real aedes node on a Redis shared with Pigeon nodes, as the example deployment runs it:
// aedes 1.x with mqemitter-redis, memory persistence.
//   node aedes-node.js PORT REDIS_URL [BROKER_ID]
// or the environment variables AEDES_PORT, REDIS_URL, AEDES_ID.
// Prints `aedes ready <port> <brokerId>` once it listens and its Redis connections are up;
// exits when stdin closes so that a test that dies leaves no node behind.
'use strict'

const net = require('node:net')

async function main () {
  const port = Number(process.argv[2] || process.env.AEDES_PORT)
  const redisUrl = process.argv[3] || process.env.REDIS_URL
  const id = process.argv[4] || process.env.AEDES_ID || undefined
  if (!port || !redisUrl) {
    console.error('usage: node aedes-node.js PORT REDIS_URL [BROKER_ID]')
    process.exit(2)
  }
  const { Aedes } = await import('aedes')
  const mqemitterRedis = require('mqemitter-redis')
  const mq = mqemitterRedis({ connectionString: redisUrl })
  const broker = await Aedes.createBroker({ mq, id })
  // Ready when both Redis connections are (ioredis: status 'ready'); subscribing from a
  // 'connect' handler instead races ioredis' ready check and crashes it.
  await Promise.all([mq.subConn, mq.pubConn].map((conn) => conn.status === 'ready'
    ? null
    : new Promise((resolve) => conn.once('ready', resolve))))
  const server = net.createServer(broker.handle)
  server.listen(port, '127.0.0.1', () => {
    console.log(`aedes ready ${port} ${broker.id}`)
  })
  broker.on('clientError', (client, err) => {
    console.error(`aedes client error ${client && client.id}: ${err.message}`)
  })
  process.stdin.on('end', () => process.exit(0))
  process.stdin.resume()
}

main().catch((err) => {
  console.error(`aedes node failed: ${err && err.stack}`)
  process.exit(1)
})
