export { clusterTeardown as default } from './cluster-setup';
