import { context, propagation, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';

/**
 * An OpenTelemetry SDK registered as the global one for a test (NodeTracerProvider: its context
 * manager carries the active span across awaits), exporting every span to memory as it ends.
 */
export class InMemoryTracing {
  readonly exporter = new InMemorySpanExporter();
  private readonly provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(this.exporter)] });

  /** Registers the provider as the global tracer provider (and context manager, propagator). */
  static start(): InMemoryTracing {
    const tracing = new InMemoryTracing();
    tracing.provider.register();
    return tracing;
  }

  /** The spans ended so far, in the order they ended. */
  spans(): ReadableSpan[] {
    return this.exporter.getFinishedSpans();
  }

  /** The ended spans of this name. */
  named(name: string): ReadableSpan[] {
    return this.spans().filter((span) => span.name === name);
  }

  /** Forgets the spans ended so far. */
  reset(): void {
    this.exporter.reset();
  }

  /** Unregisters everything `start()` registered globally. */
  async stop(): Promise<void> {
    await this.provider.shutdown();
    trace.disable();
    context.disable();
    propagation.disable();
  }
}

/**
 * Every piece of text a span exports: its name, attribute names and values, events (names and
 * attributes), status message, links, the instrumentation scope and resource attributes.
 */
export function spanText(spans: readonly ReadableSpan[]): string {
  return spans
    .map((span) =>
      JSON.stringify({
        name: span.name,
        attributes: span.attributes,
        events: span.events.map((event) => ({ name: event.name, attributes: event.attributes })),
        status: span.status,
        links: span.links.map((link) => link.attributes),
        scope: span.instrumentationScope,
        resource: span.resource.attributes,
      }),
    )
    .join('\n');
}

/** The 8-character pieces of the secret part (after the first `-`) of any of `tokens` found in `text`. */
export function tokenPieces(text: string, tokens: readonly string[]): string[] {
  const found: string[] = [];
  for (const token of tokens) {
    const secret = token.slice(token.indexOf('-') + 1);
    for (let i = 0; i + 8 <= secret.length; i++) if (text.includes(secret.slice(i, i + 8))) found.push(secret.slice(i, i + 8));
  }
  return found;
}
