import { isFree } from './ports';
import { type PrivateRedisCluster, startRedisCluster } from './redis-cluster';

const CLUSTER_KEY = '__apiTokenRedisCluster';

/** Three ports from 7101 up whose cluster bus ports (+10000) are free too. */
async function clusterPorts(): Promise<number[]> {
  const ports: number[] = [];
  for (let port = 7101; ports.length < 3 && port < 7600; port++) {
    if ((await isFree(port)) && (await isFree(port + 10_000))) ports.push(port);
  }
  if (ports.length < 3) throw new Error('no three free ports (and bus ports) between 7101 and 7600 for the test Redis Cluster');
  return ports;
}

/** Global setup of the `e2e-cluster` project: a private three-master cluster, unless `TEST_REDIS_CLUSTER_NODES` names one. */
export default async function clusterSetup(): Promise<void> {
  if (process.env.TEST_REDIS_CLUSTER_NODES) return;
  const cluster = await startRedisCluster(await clusterPorts());
  (globalThis as Record<string, unknown>)[CLUSTER_KEY] = cluster;
  process.env.TEST_REDIS_CLUSTER_NODES = cluster.nodes.join(',');
}

/** Global teardown: stops the cluster the setup started. */
export async function clusterTeardown(): Promise<void> {
  const cluster = (globalThis as Record<string, unknown>)[CLUSTER_KEY] as PrivateRedisCluster | undefined;
  if (!cluster) return;
  await cluster.stop();
  delete process.env.TEST_REDIS_CLUSTER_NODES;
}
