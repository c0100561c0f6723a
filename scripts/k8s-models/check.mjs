// Validates custom resources (Istio, Prometheus Operator) against the models published in
// @kubernetes-models/istio and @kubernetes-models/prometheus-operator, strictly:
//
// 1. schema: the model's own validator (ajv code generated from the CRD's OpenAPI schema:
//    types, enums, required fields, patterns);
// 2. unknown keys: those validators accept any extra key (the CRD schemas do not say
//    additionalProperties: false), so every key of the document is also walked against
//    the model's TypeScript interface (generated from the same schema) with the
//    TypeScript compiler's type checker; a key the interface does not declare is an error.
//    Free-form objects (`{}` in the interface: x-kubernetes-preserve-unknown-fields, such
//    as an EnvoyFilter patch value) are reported back so the caller checks them itself.
//
//   node check.mjs DOCS.json    DOCS.json: [{"where": "...", "doc": {...}}, ...]
// Prints one JSON object {"results": [{"where", "errors": [...], "freeForm": [...]}]} and
// exits 0; a document whose apiVersion/kind has no model gets an error.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const HERE = path.dirname(fileURLToPath(import.meta.url));

function modelModule(apiVersion, kind) {
  const [group, version] = String(apiVersion).split("/");
  if (!version || !/^[A-Za-z0-9]+$/.test(String(kind))) return null;
  let pkg;
  if (group.endsWith(".istio.io")) pkg = "@kubernetes-models/istio";
  else if (group === "monitoring.coreos.com") pkg = "@kubernetes-models/prometheus-operator";
  else return null;
  const spec = `${pkg}/${group}/${version}/${kind}`;
  const file = path.join(HERE, "node_modules", pkg, group, version, `${kind}.js`);
  return fs.existsSync(file) ? spec : null;
}

function kindOf(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

function main() {
  const input = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const specs = new Map(); // module spec -> alias
  const results = input.map(({ where, doc }) => {
    const spec = modelModule(doc?.apiVersion, doc?.kind);
    if (spec && !specs.has(spec)) specs.set(spec, `T${specs.size}`);
    return { where, doc, spec, errors: [], freeForm: [] };
  });
  for (const result of results) {
    if (!result.spec) {
      result.errors.push(
        `no schema for apiVersion ${JSON.stringify(result.doc?.apiVersion)} kind ${JSON.stringify(result.doc?.kind)}`,
      );
    }
  }

  // The interfaces, through one throw-away entry module under this package's node_modules
  // (so that the packages resolve, and nothing lands in the work tree), compiled once for
  // all documents.
  const work = fs.mkdtempSync(path.join(HERE, "node_modules", ".check-"));
  try {
    const entry = path.join(work, "entry.mts");
    const lines = [];
    for (const [spec, alias] of specs) {
      const kind = spec.split("/").pop();
      lines.push(`import type { I${kind} as ${alias} } from "${spec}";`);
      lines.push(`export type ${alias}_ = ${alias};`);
    }
    fs.writeFileSync(entry, lines.join("\n") + "\n");
    const options = {
      strict: true,
      noEmit: true,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
      skipLibCheck: true,
      types: [],
    };
    const host = ts.createCompilerHost(options);
    host.jsDocParsingMode = ts.JSDocParsingMode?.ParseNone; // doc comments are not needed
    const program = ts.createProgram({ rootNames: [entry], options, host });
    const source = program.getSourceFile(entry);
    const diagnostics = [...program.getSyntacticDiagnostics(source), ...program.getSemanticDiagnostics(source)];
    if (diagnostics.length > 0) {
      const text = ts.formatDiagnostics(diagnostics, {
        getCanonicalFileName: (f) => f,
        getCurrentDirectory: () => HERE,
        getNewLine: () => os.EOL,
      });
      throw new Error(`the models' type definitions do not compile:\n${text}`);
    }
    const checker = program.getTypeChecker();
    const types = new Map();
    for (const statement of source.statements) {
      if (ts.isTypeAliasDeclaration(statement)) {
        const alias = statement.name.text.replace(/_$/, "");
        types.set(alias, checker.getTypeAtLocation(statement.name));
      }
    }
    const typeOf = (symbol) =>
      checker.getTypeOfSymbol
        ? checker.getTypeOfSymbol(symbol)
        : checker.getTypeOfSymbolAtLocation(symbol, symbol.valueDeclaration);

    // The array types a type is made of: itself, or the members of an intersection of
    // arrays (the generator intersects the two sides of a oneOf).
    const arrayParts = (type) =>
      (type.isIntersection() ? type.types : [type]).filter((t) => checker.isArrayType(t) || checker.isTupleType(t));
    const matchesKind = (type, value) => {
      const kind = kindOf(value);
      const f = type.flags;
      if (f & (ts.TypeFlags.Any | ts.TypeFlags.Unknown)) return true;
      switch (kind) {
        case "string":
          return Boolean(f & ts.TypeFlags.StringLike);
        case "number":
          return Boolean(f & ts.TypeFlags.NumberLike);
        case "boolean":
          return Boolean(f & ts.TypeFlags.BooleanLike);
        case "array":
          return arrayParts(type).length > 0;
        case "object":
          return Boolean(f & (ts.TypeFlags.Object | ts.TypeFlags.Intersection)) && arrayParts(type).length === 0;
        default:
          return true;
      }
    };

    // `types`: every type the value may have (the members of unions and the branches of
    // Exclude<...> tricks the generator emits for oneOf); a key is unknown when none of
    // them declares it.
    const walk = (value, types, at, result, segs = []) => {
      if (value === null || value === undefined) return;
      const candidates = [];
      for (let type of types) {
        type = checker.getNonNullableType(type);
        if (type.flags & (ts.TypeFlags.Any | ts.TypeFlags.Unknown)) return;
        for (const member of type.isUnion() ? type.types : [type]) {
          if (matchesKind(member, value)) candidates.push(member);
        }
      }
      if (candidates.length === 0) return; // a type mismatch: the schema check reports it
      if (Array.isArray(value)) {
        const elements = candidates
          .flatMap((t) => arrayParts(t))
          .map((t) => checker.getTypeArguments(t)[0])
          .filter(Boolean);
        if (elements.length > 0) value.forEach((item, i) => walk(item, elements, `${at}[${i}]`, result, [...segs, i]));
        return;
      }
      if (kindOf(value) !== "object") return;
      const free = candidates.some(
        (t) => checker.getPropertiesOfType(t).length === 0 && !checker.getIndexInfoOfType(t, ts.IndexKind.String),
      );
      if (free) {
        result.freeForm.push(at || ".");
        result.seen?.set(JSON.stringify(segs), "free");
        return;
      }
      const map = candidates.some((t) => checker.getIndexInfoOfType(t, ts.IndexKind.String));
      result.seen?.set(JSON.stringify(segs), map ? "map" : "struct");
      if (!map) result.structs?.push(segs);
      for (const [key, item] of Object.entries(value)) {
        const child = at ? `${at}.${key}` : key;
        const childTypes = [];
        for (const t of candidates) {
          const property = checker.getPropertyOfType(t, key);
          if (property) {
            childTypes.push(typeOf(property));
            continue;
          }
          const index = checker.getIndexInfoOfType(t, ts.IndexKind.String);
          if (index) childTypes.push(index.type);
        }
        if (childTypes.length === 0) {
          result.errors.push(`${child}: unknown field (not in the schema)`);
        } else {
          walk(item, childTypes, child, result, [...segs, key]);
        }
      }
    };

    for (const result of results) {
      if (!result.spec) continue;
      const root = [types.get(specs.get(result.spec))];
      result.structs = [];
      result.seen = new Map();
      walk(result.doc, root, "", result);
      // Every object of the document must have been walked (or lie inside a free-form
      // object): none may escape the check through a type the walker did not follow.
      const every = (value, segs) => {
        if (Array.isArray(value)) return value.forEach((item, i) => every(item, [...segs, i]));
        if (kindOf(value) !== "object") return;
        const seen = result.seen.get(JSON.stringify(segs));
        if (seen === "free") return;
        if (!seen && result.errors.length === 0) {
          result.errors.push(`${JSON.stringify(segs)}: not checked for unknown keys (no type for it)`);
        }
        for (const [key, item] of Object.entries(value)) every(item, [...segs, key]);
      };
      every(result.doc, []);
      // The check must be able to fail: an extra key planted in each object of the
      // document that has a fixed set of fields must be reported at that place.
      for (const segs of result.structs) {
        const mutated = structuredClone(result.doc);
        let node = mutated;
        for (const seg of segs) node = node[seg];
        node.zzNotAField = true;
        const probe = { doc: mutated, errors: [], freeForm: [] };
        walk(mutated, root, "", probe);
        const at = segs.reduce((a, seg) => (typeof seg === "number" ? `${a}[${seg}]` : a ? `${a}.${seg}` : seg), "");
        const expected = at ? `${at}.zzNotAField: unknown field` : "zzNotAField: unknown field";
        if (!probe.errors.some((e) => e.startsWith(expected))) {
          result.errors.push(`${at || "."}: the unknown-key check cannot see extra fields here`);
        }
      }
      result.checked = result.structs.length;
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  return results;
}

async function validateSchemas(results) {
  for (const result of results) {
    if (!result.spec) continue;
    const module = await import(result.spec);
    const Model = module[result.spec.split("/").pop()];
    try {
      new Model(result.doc).validate();
    } catch (error) {
      const details = error.errors ?? error.details;
      if (Array.isArray(details) && details.length > 0) {
        for (const e of details) {
          const where = (e.instancePath || "").replace(/^\//, "").replaceAll("/", ".") || ".";
          const extra = e.params?.allowedValues ? ` ${JSON.stringify(e.params.allowedValues)}` : "";
          result.errors.push(`${where}: ${e.message}${extra}`);
        }
      } else {
        result.errors.push(String(error.message ?? error));
      }
    }
  }
}

const results = main();
await validateSchemas(results);
process.stdout.write(
  JSON.stringify({ results: results.map(({ where, errors, freeForm, checked }) => ({ where, errors, freeForm, checked: checked ?? 0 })) }) + "\n",
);
