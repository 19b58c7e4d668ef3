// Every type named in a public signature of the package's entry points
// (margin-softmax, margin-softmax/tfjs) is
// exported from one of them, so a user can name the types of what they pass
// and get back. Read from the sources with the TypeScript compiler: the
// annotated parameter, return, property and heritage types of every exported
// function, class (public members), interface and type alias.
import * as path from 'path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const LIB = path.resolve(__dirname, '..', 'lib');
const ENTRIES = ['index.ts', 'tfjs.ts'].map((f) => path.join(LIB, f));

function isHidden(node: ts.Node): boolean {
  const flags = ts.getCombinedModifierFlags(node as ts.Declaration);
  const name = (node as { name?: ts.Node }).name;
  return (flags & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected)) !== 0 || (name !== undefined && ts.isPrivateIdentifier(name));
}

/** The declared types named in a declaration's public surface (bodies and initialisers are not). */
function namedTypes(decl: ts.Node, checker: ts.TypeChecker): ts.Symbol[] {
  const found: ts.Symbol[] = [];
  const visit = (node: ts.Node): void => {
    if (ts.isBlock(node) || isHidden(node)) return;
    if (ts.isParameter(node) || ts.isPropertyDeclaration(node) || ts.isVariableDeclaration(node)) {
      if (node.type) visit(node.type);
      return;
    }
    if (ts.isTypeReferenceNode(node) || ts.isExpressionWithTypeArguments(node)) {
      const at = ts.isTypeReferenceNode(node) ? node.typeName : node.expression;
      let sym = checker.getSymbolAtLocation(at);
      if (sym && sym.flags & ts.SymbolFlags.Alias) sym = checker.getAliasedSymbol(sym);
      if (sym) found.push(sym);
    }
    ts.forEachChild(node, visit);
  };
  visit(decl);
  return found;
}

describe('public typings', () => {
  it('every type in a public signature is exported from an entry point', () => {
    const program = ts.createProgram(ENTRIES, { strict: true, target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.CommonJS, skipLibCheck: true, types: ['node'] });
    const checker = program.getTypeChecker();
    const exported = new Set<ts.Symbol>();
    for (const file of ENTRIES) {
      const mod = checker.getSymbolAtLocation(program.getSourceFile(file)!)!;
      for (let sym of checker.getExportsOfModule(mod)) {
        if (sym.flags & ts.SymbolFlags.Alias) sym = checker.getAliasedSymbol(sym);
        exported.add(sym);
      }
    }
    expect(exported.size).toBeGreaterThan(20);
    const missing = new Set<string>();
    for (const sym of exported) {
      for (const decl of sym.declarations ?? []) {
        for (const used of namedTypes(decl, checker)) {
          const where = used.declarations?.[0];
          if (!where || used.flags & ts.SymbolFlags.TypeParameter) continue;
          const file = where.getSourceFile().fileName;
          if (file.startsWith(LIB) && !exported.has(used)) missing.add(`${used.name} (${path.basename(file)}, in ${sym.name})`);
        }
      }
    }
    expect([...missing]).toEqual([]);
  });
});
