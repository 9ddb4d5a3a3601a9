import { type PrivateRedisCluster, clusterPorts, startRedisCluster } from './redis-cluster';

const CLUSTER_KEY = '__apiTokenRedisCluster';


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
