// setupFiles of the `e2e-cluster` project: every suite it runs talks to the private Redis Cluster.
process.env.TEST_REDIS_MODE = 'cluster';
