import 'reflect-metadata';

/**
 * Runs another scenario (`bench/{name}.bench.ts`, function `exported`) in a process of its own, so
 * that its memory figures are its own and a failure in it (a Nest bootstrap error exits the process)
 * cannot take the benchmark down with it. Reads `{ file, exported, options }` from its parent over
 * IPC and answers `{ result }` or `{ error }`.
 */
process.once('message', (message: { file: string; exported: string; options: Record<string, unknown> }) => {
  void (async () => {
    try {
      const module = (await import(message.file)) as Record<string, unknown>;
      const run = module[message.exported];
      if (typeof run !== 'function') throw new Error(`${message.file} does not export ${message.exported}()`);
      const result: unknown = await (run as (o: Record<string, unknown>) => Promise<unknown>)(message.options);
      process.send?.({ result }, () => process.exit(0));
    } catch (error) {
      process.send?.({ error: error instanceof Error ? error.message : String(error) }, () => process.exit(1));
    }
  })();
});
