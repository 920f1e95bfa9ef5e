// The earlier Node service's producer: syncQueue.add('sync-tenant', {tenantId}).
// Usage: node produce.mjs <command> [args]; REDIS_URL and QUEUE_PREFIX from the environment.
import { Queue } from 'bullmq';
import IORedis from 'ioredis';

const connection = new IORedis(process.env.REDIS_URL, { maxRetriesPerRequest: null });
const prefix = process.env.QUEUE_PREFIX || 'bull';
const [command, ...args] = process.argv.slice(2);
const queue = new Queue(args[0] || 'sync', { connection, prefix });
let out;
if (command === 'add') {
  const job = await queue.add('sync-tenant', { tenantId: args[1] });
  out = { id: job.id };
} else if (command === 'counts') {
  out = { counts: await queue.getJobCounts(), paused: await queue.isPaused() };
} else if (command === 'pause') {
  await queue.pause();
  out = { paused: await queue.isPaused() };
} else if (command === 'resume') {
  await queue.resume();
  out = { paused: await queue.isPaused() };
} else if (command === 'job') {
  const job = await queue.getJob(args[1]);
  out = job ? { name: job.name, data: job.data, returnvalue: job.returnvalue, state: await job.getState() } : null;
} else {
  throw new Error(`unknown command ${command}`);
}
console.log(JSON.stringify(out));
await queue.close();
await connection.quit();
