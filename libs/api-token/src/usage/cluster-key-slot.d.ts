/** Types of `cluster-key-slot` (ioredis's CRC16 of Redis Cluster slots), which ships none. */
declare module 'cluster-key-slot' {
  /** The Cluster slot (0–16383) of a key, hash tags included. */
  function calculateSlot(key: string | Buffer): number;
  export = calculateSlot;
}
