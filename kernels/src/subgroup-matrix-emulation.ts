/**
 * Subgroup matrices emulated in plain WGSL, so the tensor-core kernels (matmul-tc-staged.ts,
 * matmul-subgroup.ts, attention-tc.ts) run — slowly, but with their real indexing, staging,
 * masking and barriers — on a CPU driver (lavapipe), which has no subgroup matrices. Without it
 * their results were first checked on a GPU call; with it the tests compare them with float64 on
 * the CPU machine too (`TUNELOOM_EMULATE_TC=1`, honoured on software adapters only: device.ts).
 *
 * The model: a subgroup is 32 consecutive invocations (local_invocation_index / 32, as on NVIDIA
 * and as every kernel here assumes), and lane ℓ = local_invocation_index % 32 owns 8 elements of
 * each 16×16 result matrix: rows 4⌊ℓ/8⌋ … 4⌊ℓ/8⌋ + 3 of columns 2(ℓ mod 8) and 2(ℓ mod 8) + 1.
 * Operands hold what the lane's own results need:
 * - left (16×16, rows × k): the lane's 4 rows, all 16 columns → array<f32, 64>;
 * - right (16×16, k × columns): the lane's 2 columns, all 16 rows → array<f32, 32>;
 * - result: the lane's 8 elements → array<f32, 8>.
 * (4 rows × 2 columns rather than 8 × 1: copying the left operand into each multiply-accumulate
 * dominates LLVM's build time on lavapipe, 5.6 against 7 s for 4x4_2x2sg8u; loop bounds are read
 * from private variables set at entry so LLVM does not unroll them, 7 against 18 s.)
 * subgroupMatrixLoad reads element (r, c) at var[off + r·stride + c] (row_major) or
 * var[off + c·stride + r] (col_major), rounded to the matrix's component type;
 * subgroupMatrixStore writes the lane's own elements only (so the 32 lanes write each element
 * once); subgroupMatrixMultiplyAccumulate(l, r, acc) = acc + l·r in f32 (a result of f16 is
 * rounded). Results match the hardware to f32 rounding (tensor cores sum in another order), so a
 * kernel's float64 tests keep their tolerances. Speed means nothing here.
 *
 * Covered: the 16×16×16 config (f16 or f32 components), `<type, major>` loads and `<major>` stores
 * through `&array` of module scope, constructors without a value, (MultiplyAccumulate|Multiply),
 * entry points with or without a local_invocation_index parameter. Anything else throws naming it;
 * a matrix of the wrong kind passed somewhere fails to compile (the kinds are distinct array types).
 * The helpers' names and locals start with sm_, so they shadow no name of the kernel.
 */

/** The config the emulation offers (device.ts reports it as the adapter's only one). */
export const EMULATED_CONFIG = { componentType: "f16", resultComponentType: "f32", M: 16, N: 16, K: 16 } as const;

/** Whether the emulation is asked for: `TUNELOOM_EMULATE_TC=1` (device.ts applies it on CPU drivers only). */
export const subgroupMatrixEmulationRequested = () => process.env.TUNELOOM_EMULATE_TC === "1";

const ENABLE = /enable\s+chromium_experimental_subgroup_matrix\s*;/;
const UNIFORMITY_DIAG = /diagnostic\(\s*off\s*,\s*chromium\.subgroup_matrix_uniformity\s*\)\s*;/g;
const MATRIX_TYPE = /subgroup_matrix_(left|right|result)\s*<\s*(\w+)\s*,\s*(\d+)\s*,\s*(\d+)\s*>/g;
const KIND_TYPE: Record<string, string> = { left: "array<f32, 64>", right: "array<f32, 32>", result: "array<f32, 8>" };

/** Whether `code` uses subgroup matrices (and so needs the emulation on a device without them). */
export const usesSubgroupMatrices = (code: string) => ENABLE.test(code);

interface Helpers {
  resultRounded: boolean;
  elementOf: Map<string, string>;
  fns: Map<string, string>;
}

/** `code` with every subgroup-matrix type and builtin replaced by plain WGSL (see the file comment). */
export function emulateSubgroupMatrices(code: string): string {
  if (!usesSubgroupMatrices(code)) return code;
  let src = code.replace(ENABLE, "").replace(UNIFORMITY_DIAG, "");
  for (const m of src.matchAll(MATRIX_TYPE)) {
    if (m[3] !== "16" || m[4] !== "16") throw new Error(`subgroup-matrix emulation: only 16×16 matrices are emulated, got ${m[0]}`);
    if (m[2] !== "f16" && m[2] !== "f32") throw new Error(`subgroup-matrix emulation: component type ${m[2]} is not emulated (${m[0]})`);
  }
  const h: Helpers = { resultRounded: /subgroup_matrix_result\s*<\s*f16/.test(src), elementOf: moduleArrays(src), fns: new Map() };
  src = replaceBuiltins(src, h);
  const ctorWithArgs = /subgroup_matrix_(?:left|right|result)\s*<[^>]*>\s*\(\s*[^)\s]/.exec(src);
  if (ctorWithArgs) throw new Error(`subgroup-matrix emulation: constructors with a value are not emulated (${ctorWithArgs[0]}…)`);
  src = src.replace(MATRIX_TYPE, (_all, kind: string) => KIND_TYPE[kind]!);
  const left = /subgroupMatrix\w*|subgroup_matrix\w*/.exec(src);
  if (left) throw new Error(`subgroup-matrix emulation: '${left[0]}' is not emulated`);
  src = withLaneIndex(src);
  return `${src}
// ---- subgroup-matrix emulation (kernels/src/subgroup-matrix-emulation.ts)
var<private> sm_lane: u32; // this invocation's lane in its subgroup of 32
var<private> sm_n8: u32;
var<private> sm_n4: u32;
var<private> sm_n16: u32;
fn sm_row0() -> u32 { return 4u * (sm_lane / 8u); } // the lane's first row (4 rows)
fn sm_col0() -> u32 { return 2u * (sm_lane % 8u); } // the lane's first column (2 columns)
${[...h.fns.values()].join("\n")}
`;
}

/** Element type of every module-scope array (`var<…> name: array<E…>`). */
function moduleArrays(src: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of src.matchAll(/var\s*(?:<[^>]*>)?\s+(\w+)\s*:\s*array\s*<\s*(\w+(?:\s*<[^>]*>)?)/g)) out.set(m[1]!, m[2]!.replace(/\s+/g, ""));
  return out;
}

/** The module-scope array a pointer argument names: `&name` or `&(name)`. */
function pointee(arg: string, h: Helpers): { name: string; element: string } {
  const m = /^&\s*\(?\s*(\w+)\s*\)?$/.exec(arg.trim());
  if (!m) throw new Error(`subgroup-matrix emulation: pointer argument '${arg}' is not &<module-scope array>`);
  const element = h.elementOf.get(m[1]!);
  if (element !== "f16" && element !== "f32") throw new Error(`subgroup-matrix emulation: '${m[1]}' is not a module-scope array of f16 or f32 (${element ?? "not found"})`);
  return { name: m[1]!, element };
}

/** Index of element (r, c) of a matrix at sm_off with stride sm_stride. */
const at = (major: string, r: string, c: string) => (major === "row_major" ? `sm_off + (${r}) * sm_stride + ${c}` : `sm_off + (${c}) * sm_stride + ${r}`);

function replaceBuiltins(src: string, h: Helpers): string {
  src = replaceCalls(src, "subgroupMatrixLoad", (tmpl, args) => {
    const t = /^subgroup_matrix_(left|right|result)\s*<\s*(\w+)\s*,\s*\d+\s*,\s*\d+\s*>\s*,\s*(row_major|col_major)$/.exec(tmpl ?? "");
    if (!t || args.length !== 3) throw new Error(`subgroup-matrix emulation: subgroupMatrixLoad<${tmpl ?? ""}>(${args.join(", ")}) is not the <type, major>(ptr, offset, stride) form`);
    const { name, element } = pointee(args[0]!, h);
    const [, kind, comp, major] = t as unknown as [string, "left" | "right" | "result", string, string];
    const fn = `sm_load_${kind}_${comp}_${name}_${major}`;
    const value = (x: string) => (comp === "f16" && element !== "f16" ? `f32(f16(${x}))` : `f32(${x})`);
    const body = {
      // the lane's 8 rows, every column
      left: `for (var sm_i = 0u; sm_i < sm_n4; sm_i++) { for (var sm_c = 0u; sm_c < sm_n16; sm_c++) { sm_m[sm_i * 16u + sm_c] = ${value(`${name}[${at(major!, "sm_row0() + sm_i", "sm_c")}]`)}; } }`,
      // every row of the lane's column
      right: `for (var sm_k = 0u; sm_k < sm_n16; sm_k++) { for (var sm_j = 0u; sm_j < 2u; sm_j++) { sm_m[sm_k * 2u + sm_j] = ${value(`${name}[${at(major!, "sm_k", "sm_col0() + sm_j")}]`)}; } }`,
      // the lane's own elements
      result: `for (var sm_e = 0u; sm_e < sm_n8; sm_e++) { sm_m[sm_e] = ${value(`${name}[${at(major!, "sm_row0() + sm_e / 2u", "sm_col0() + sm_e % 2u")}]`)}; }`,
    }[kind!];
    h.fns.set(fn, `fn ${fn}(sm_off: u32, sm_stride: u32) -> ${KIND_TYPE[kind!]} {
  var sm_m: ${KIND_TYPE[kind!]};
  ${body}
  return sm_m;
}`);
    return `${fn}(${args[1]}, ${args[2]})`;
  });
  src = replaceCalls(src, "subgroupMatrixStore", (tmpl, args) => {
    const major = (tmpl ?? "").trim();
    if ((major !== "row_major" && major !== "col_major") || args.length !== 4) throw new Error(`subgroup-matrix emulation: subgroupMatrixStore<${tmpl ?? ""}>(${args.join(", ")}) is not the <major>(ptr, offset, value, stride) form`);
    const { name, element } = pointee(args[0]!, h);
    const fn = `sm_store_${name}_${major}`;
    h.fns.set(fn, `fn ${fn}(sm_off: u32, sm_m: ${KIND_TYPE.result}, sm_stride: u32) {
  for (var sm_e = 0u; sm_e < sm_n8; sm_e++) { ${name}[${at(major, "sm_row0() + sm_e / 2u", "sm_col0() + sm_e % 2u")}] = ${element}(sm_m[sm_e]); }
}`);
    return `${fn}(${args[1]}, ${args[2]}, ${args[3]})`;
  });
  const mma = () => {
    h.fns.set("sm_mma", `fn sm_mma(sm_l: ${KIND_TYPE.left}, sm_r: ${KIND_TYPE.right}, sm_acc: ${KIND_TYPE.result}) -> ${KIND_TYPE.result} {
  var sm_o: ${KIND_TYPE.result};
  for (var sm_e = 0u; sm_e < sm_n8; sm_e++) {
    var sm_s = sm_acc[sm_e];
    for (var sm_k = 0u; sm_k < sm_n16; sm_k++) { sm_s = fma(sm_l[(sm_e / 2u) * 16u + sm_k], sm_r[sm_k * 2u + sm_e % 2u], sm_s); }
    sm_o[sm_e] = ${h.resultRounded ? "f32(f16(sm_s))" : "sm_s"};
  }
  return sm_o;
}`);
    return "sm_mma";
  };
  src = replaceCalls(src, "subgroupMatrixMultiplyAccumulate", (tmpl, args) => {
    if (tmpl !== undefined || args.length !== 3) throw new Error(`subgroup-matrix emulation: subgroupMatrixMultiplyAccumulate takes (left, right, acc), got (${args.join(", ")})`);
    return `${mma()}(${args[0]}, ${args[1]}, ${args[2]})`;
  });
  src = replaceCalls(src, "subgroupMatrixMultiply", (_tmpl, args) => {
    if (args.length !== 2) throw new Error(`subgroup-matrix emulation: subgroupMatrixMultiply takes (left, right), got (${args.join(", ")})`);
    return `${mma()}(${args[0]}, ${args[1]}, ${KIND_TYPE.result}())`;
  });
  return src;
}

/**
 * Every @compute entry point sets sm_lane (and the loop bounds) first: from its local_invocation_index
 * and num_workgroups parameters, added (as sm_lid, sm_nwg) where the entry point has none.
 */
function withLaneIndex(src: string): string {
  let out = "", i = 0;
  for (const m of src.matchAll(/@compute[^{]*?\bfn\s+\w+\s*\(/g)) {
    const open = m.index! + m[0].length;
    let k = open;
    for (let d = 1; d > 0; k++) {
      if (k >= src.length) throw new Error("subgroup-matrix emulation: unbalanced entry point parameters");
      if (src[k] === "(") d++;
      else if (src[k] === ")") d--;
    }
    const params = src.slice(open, k - 1);
    const named = /@builtin\s*\(\s*local_invocation_index\s*\)\s*(\w+)\s*:/.exec(params);
    const groups = /@builtin\s*\(\s*num_workgroups\s*\)\s*(\w+)\s*:/.exec(params);
    const lid = named ? named[1]! : "sm_lid", nwg = groups ? groups[1]! : "sm_nwg";
    const added = [named ? "" : "@builtin(local_invocation_index) sm_lid: u32", groups ? "" : "@builtin(num_workgroups) sm_nwg: vec3<u32>"].filter(Boolean);
    const kept = params.trim() ? [params.replace(/,\s*$/, "")] : [];
    const newParams = [...kept, ...added].join(", ");
    const body = src.indexOf("{", k);
    out += src.slice(i, open) + newParams + src.slice(k - 1, body + 1) + `\n  sm_lane = ${lid} % 32u; sm_n8 = select(8u, 9u, ${nwg}.x == 4000000000u); sm_n16 = 2u * sm_n8; sm_n4 = sm_n8 / 2u;`;
    i = body + 1;
  }
  return out + src.slice(i);
}

/** Names that take a template list (what precedes a `<` that opens one rather than compares). */
const TEMPLATED = /\b(subgroup_matrix_(?:left|right|result)|subgroupMatrix\w+|array|vec[234]|mat[234]x[234]|ptr|atomic|bitcast)\s*$/;

/**
 * Replaces every call `name<template>(args)` (template optional) by fn(template, args), its
 * arguments transformed first (a load nested in a multiply-accumulate). `name` must be followed by
 * `<` or `(`, so subgroupMatrixMultiply does not match subgroupMatrixMultiplyAccumulate.
 */
function replaceCalls(src: string, name: string, fn: (template: string | undefined, args: string[]) => string): string {
  let out = "", i = 0;
  for (;;) {
    const j = src.indexOf(name, i);
    if (j < 0) return out + src.slice(i);
    let k = j + name.length;
    const before = j > 0 ? src[j - 1]! : " ";
    if (/\w/.test(before) || !(src[k] === "<" || src[k] === "(")) { out += src.slice(i, k); i = k; continue; }
    out += src.slice(i, j);
    let template: string | undefined;
    if (src[k] === "<") {
      const start = k + 1;
      for (let d = 0; ; k++) {
        if (k >= src.length) throw new Error(`unbalanced template after ${name}`);
        if (src[k] === "<") d++;
        else if (src[k] === ">" && --d === 0) break;
      }
      template = src.slice(start, k).trim();
      k++;
    }
    if (src[k] !== "(") throw new Error(`${name}<${template}> is not followed by a call`);
    const args: string[] = [];
    let last = k + 1;
    // Commas split arguments outside parentheses, brackets and type templates (`array<f32, 4>`,
    // `subgroup_matrix_result<f32, 16, 16>()`); a `<` after any other name is a comparison.
    for (let d = 0, t = 0; ; k++) {
      if (k >= src.length) throw new Error(`unbalanced call of ${name}`);
      const ch = src[k];
      if (ch === "(" || ch === "[") d++;
      else if ((ch === ")" || ch === "]") && --d === 0) break;
      else if (ch === "<" && TEMPLATED.test(src.slice(Math.max(0, k - 40), k))) t++;
      else if (ch === ">" && t > 0) t--;
      else if (ch === "," && d === 1 && t === 0) { args.push(src.slice(last, k).trim()); last = k + 1; }
    }
    const lastArg = src.slice(last, k).trim();
    if (lastArg !== "" || args.length) args.push(lastArg);
    out += fn(template, args.map((a) => replaceCalls(a, name, fn)));
    i = k + 1;
  }
}
