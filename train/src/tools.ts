/**
 * The commands that use a trained model or draw the paper's figures:
 *   margin-softmax figures  --out DIR
 *   margin-softmax embed    --checkpoint RUN --data DIR --out FILE.safetensors
 *   margin-softmax verify   --checkpoint RUN IMAGE IMAGE
 *   margin-softmax identify --checkpoint RUN --gallery FILE.safetensors [--top K] IMAGE...
 * Each parses its own options (parseToolArgs throws ArgumentError for a
 * usage error) and runs with runTool.
 */
import { parseArgs, type ParseArgsConfig } from 'util';
import { ArgumentError } from 'margin-softmax';
import { writeFigures } from './figures';

export const TOOLS_USAGE = `
  margin-softmax figures  --out DIR       the paper's Figures 1 and 2 as SVG (margin function; two-class boundaries)
`;

export const TOOL_COMMANDS = ['figures'] as const;
export type ToolCommand = (typeof TOOL_COMMANDS)[number];

export function isToolCommand(c: string): c is ToolCommand {
  return (TOOL_COMMANDS as readonly string[]).includes(c);
}

export type ToolArgs = { command: 'figures'; out: string };

function parse(command: string, args: string[], options: NonNullable<ParseArgsConfig['options']>, positionals: boolean) {
  try {
    return parseArgs({ args, options, allowPositionals: positionals, strict: true });
  } catch (err) {
    throw new ArgumentError(`${command}: ${(err as Error).message}`);
  }
}

export function parseToolArgs(command: ToolCommand, args: string[]): ToolArgs {
  const { values } = parse(command, args, { out: { type: 'string' } }, false);
  return { command, out: (values.out as string | undefined) ?? 'figures' };
}

export async function runTool(a: ToolArgs, write: (s: string) => void = (s) => process.stdout.write(s)): Promise<number> {
  const files = writeFigures(a.out);
  write(files.join('\n') + '\n');
  return 0;
}
