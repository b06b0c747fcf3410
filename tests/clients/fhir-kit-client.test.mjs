// fhir-kit-client 2.x (Vermonster) against a live EHCP Record server, as its README shows it.
// Run by tests/clients/test_fhir_kit_client.py: `node --test` with EHCP_BASE and EHCP_TOKEN set.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Client } from 'fhir-kit-client';

const client = new Client({ baseUrl: process.env.EHCP_BASE, bearerToken: process.env.EHCP_TOKEN });
const SECTION = 'http://ehcp-record.example.org/fhir/CodeSystem/ehcp-section';
const NEED = 'http://ehcp-record.example.org/fhir/CodeSystem/sen-primary-need';
const nhsNumbers = JSON.parse(process.env.EHCP_NHS_NUMBERS);
const family = process.env.EHCP_FAMILY;

const child = (nhs, given = 'Jamie') => ({
  resourceType: 'Patient', birthDate: '2015-03-14', name: [{ family, given: [given] }],
  identifier: [{ system: 'https://fhir.nhs.uk/Id/nhs-number', value: nhs }],
});
const need = (subject) => ({
  resourceType: 'Condition', subject: { reference: subject },
  category: [{ coding: [{ system: SECTION, code: 'B' }] }], code: { coding: [{ system: NEED, code: 'SLCN' }] },
});

test('capability statement', async () => {
  const statement = await client.capabilityStatement();
  assert.equal(statement.fhirVersion, '4.0.1');
});

test('create, read, update with If-Match, 304 on a repeat read, history at three levels', async () => {
  const created = await client.create({ resourceType: 'Patient', body: child(nhsNumbers[0]) });
  const read = await client.read({ resourceType: 'Patient', id: created.id });
  assert.equal(read.meta.versionId, '1');
  const updated = await client.update({
    resourceType: 'Patient', id: read.id, body: { ...read, birthDate: '2015-04-01' },
    options: { headers: { 'If-Match': `W/"${read.meta.versionId}"` } },
  });
  assert.equal(updated.meta.versionId, '2');
  await assert.rejects(
    client.read({ resourceType: 'Patient', id: read.id, options: { headers: { 'If-None-Match': 'W/"2"' } } }),
    (error) => error.response.status === 304,
  );
  const instance = await client.history({ resourceType: 'Patient', id: read.id });
  assert.deepEqual(instance.entry.map((e) => e.resource.meta.versionId), ['2', '1']);
  const byType = await client.typeHistory({ resourceType: 'Patient' });
  assert.equal(byType.type, 'history');
  assert.ok(byType.entry.some((e) => e.resource.id === read.id));
  const system = await client.systemHistory();
  assert.ok(system.entry.some((e) => e.resource.id === read.id));
});

test('search with paging, string search, _include and _revinclude, compartment search', async () => {
  const ids = [];
  for (const [n, nhs] of nhsNumbers.slice(1, 4).entries()) {
    ids.push((await client.create({ resourceType: 'Patient', body: child(nhs, `Given${n}`) })).id);
  }
  const first = await client.search({ resourceType: 'Patient', searchParams: { family: family.toLowerCase(), _count: 2 } });
  assert.equal(first.total, 4);
  const second = await client.nextPage({ bundle: first });
  assert.equal(first.entry.length + second.entry.length, 4);
  const condition = await client.create({ resourceType: 'Condition', body: need(`Patient/${ids[0]}`) });
  const rev = await client.search({ resourceType: 'Patient', searchParams: { _id: ids[0], _revinclude: 'Condition:subject' } });
  assert.deepEqual(rev.entry.map((e) => [e.resource.resourceType, e.search.mode]).sort(),
    [['Condition', 'include'], ['Patient', 'match']]);
  const inc = await client.search({ resourceType: 'Condition', searchParams: { _id: condition.id, _include: 'Condition:subject' } });
  assert.deepEqual(inc.entry.map((e) => e.resource.resourceType).sort(), ['Condition', 'Patient']);
  const compartment = await client.compartmentSearch({
    resourceType: 'Condition', compartment: { resourceType: 'Patient', id: ids[0] },
  });
  assert.deepEqual(compartment.entry.map((e) => e.resource.id), [condition.id]);
});

test('conditional create by identifier', async () => {
  const nhs = nhsNumbers[4];
  const options = { headers: { 'If-None-Exist': `identifier=https://fhir.nhs.uk/Id/nhs-number|${nhs}` } };
  const first = await client.create({ resourceType: 'Patient', body: child(nhs), options });
  const again = await client.create({ resourceType: 'Patient', body: child(nhs), options });
  assert.equal(again.id, first.id);
});

test('transaction and batch at the base', async () => {
  const transaction = await client.transaction({ body: {
    resourceType: 'Bundle', type: 'transaction', entry: [
      { fullUrl: 'urn:uuid:5b4a6a8e-2d7b-4c55-9d0e-0000000000aa', resource: child(nhsNumbers[5]),
        request: { method: 'POST', url: 'Patient' } },
      { resource: need('urn:uuid:5b4a6a8e-2d7b-4c55-9d0e-0000000000aa'), request: { method: 'POST', url: 'Condition' } },
    ] } });
  assert.equal(transaction.type, 'transaction-response');
  assert.deepEqual(transaction.entry.map((e) => e.response.status.slice(0, 3)), ['201', '201']);
  const batch = await client.batch({ body: {
    resourceType: 'Bundle', type: 'batch', entry: [
      { request: { method: 'GET', url: `Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|${nhsNumbers[5]}` } },
      { request: { method: 'GET', url: 'Patient/does-not-exist' } },
    ] } });
  assert.equal(batch.type, 'batch-response');
  assert.deepEqual(batch.entry.map((e) => e.response.status.slice(0, 3)), ['200', '404']);
});
