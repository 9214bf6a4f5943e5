/**
 * Publishes a config schema as JSON Schema (draft 2020-12), generated from the
 * same zod definition that validates at startup, so editors can complete and
 * check keys (`# yaml-language-server: $schema=…`). The input side is
 * published: durations are strings with a pattern, defaults are shown as an
 * operator would write them.
 */
import { z } from "zod";

/** A JSON Schema document, as plain JSON. */
export type JsonSchema = { readonly [key: string]: unknown };

/** Options of {@link configJsonSchema}. */
export interface ConfigJsonSchemaOptions {
  /** `$id` of the published schema. */
  readonly id?: string;
  /** `title` of the root. */
  readonly title?: string;
  /** `description` of the root (defaults to the schema's own description). */
  readonly description?: string;
}

/**
 * Converts a config schema to JSON Schema with descriptions and defaults.
 * Cross-field rules written as zod refinements (e.g. "exactly one KeyManager")
 * are expressed separately with `.meta({ minProperties, maxProperties })`.
 */
export function configJsonSchema(schema: z.ZodType, options: ConfigJsonSchemaOptions = {}): JsonSchema {
  const generated = z.toJSONSchema(schema, { io: "input", target: "draft-2020-12", unrepresentable: "any" }) as Record<string, unknown>;
  const { $schema, ...rest } = generated;
  return {
    $schema,
    ...(options.id === undefined ? {} : { $id: options.id }),
    ...(options.title === undefined ? {} : { title: options.title }),
    ...(options.description === undefined ? {} : { description: options.description }),
    ...rest,
  };
}
