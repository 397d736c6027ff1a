// aedes on 127.0.0.1 with its sessions, queued QoS 1 messages and retained messages in LevelDB,
// so that a session survives a restart of the broker. Started by bridge/lab/tests/brokers/aedes.py:
//
//   node broker.mjs --port 18830 --data /tmp/aedes-data [--queue-limit 42]
//
// Prints "listening on 127.0.0.1:<port>" once it accepts connections. SIGTERM closes the
// listener, the clients and the database, then exits 0; SIGKILL loses nothing LevelDB already
// wrote (each write reaches the operating system before aedes goes on).
import net from 'node:net'
import { parseArgs } from 'node:util'
import { Aedes } from 'aedes'
import aedesPersistenceLevel from 'aedes-persistence-level'
import { ClassicLevel } from 'classic-level'

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    data: { type: 'string' },
    'queue-limit': { type: 'string', default: '42' }
  }
})
if (!values.port || !values.data) {
  console.error('usage: node broker.mjs --port PORT --data DIR [--queue-limit N]')
  process.exit(2)
}

const db = new ClassicLevel(values.data)
const persistence = aedesPersistenceLevel(db)
const broker = await Aedes.createBroker({
  persistence,
  // Messages a client may still have to read while aedes waits for the socket to drain.
  queueLimit: Number(values['queue-limit'])
})
broker.on('clientError', (client, err) => {
  console.error(`client ${client ? client.id : '?'}: ${err.message}`)
})
const server = net.createServer(broker.handle)
server.listen(Number(values.port), '127.0.0.1', () => {
  console.log(`listening on 127.0.0.1:${values.port}`)
})

let stopping = false
process.on('SIGTERM', () => {
  if (stopping) return
  stopping = true
  server.close()
  broker.close(async () => {
    await persistence.destroy?.()
    await db.close()
    process.exit(0)
  })
})
