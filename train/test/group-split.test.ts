/**
 * --val-groups: whole groups of identities (Omniglot's alphabets) held out,
 * the rest trained on; unknown groups and splits that leave too few
 * identities refused with a typed error.
 */
import { expect, test } from 'vitest';
import { configFromArgs, parse } from '../src/commands/options';
import { DataError, type DataSource } from '../src/data/datasets';
import { groupOf, splitByGroups } from '../src/data/group-split';

const src: DataSource = {
  id: 'folder:/x',
  name: 'x',
  classes: ['Greek/character01', 'Greek/character02', 'Latin/character01', 'Latin/character02', 'Latin/character03', 'Runic/character01'],
  samples: [],
  read: () => {
    throw new Error('not read');
  },
};

test('every identity of the named groups is held out, the others train, in their order', () => {
  expect(groupOf('Greek/character01')).toBe('Greek');
  expect(groupOf('s7')).toBe('s7');
  const s = splitByGroups(src, ['Greek']);
  expect(s.valClasses).toEqual(['Greek/character01', 'Greek/character02']);
  expect(s.trainClasses).toEqual(['Latin/character01', 'Latin/character02', 'Latin/character03', 'Runic/character01']);
  expect(splitByGroups(src, ['Greek', 'Runic']).valClasses.length).toBe(3);
});

test('an unknown group, or a split leaving fewer than two identities on a side, is a DataError', () => {
  expect(() => splitByGroups(src, ['Klingon'])).toThrow(DataError);
  expect(() => splitByGroups(src, ['Klingon'])).toThrow(/Expected --val-groups among the groups of x \(Greek, Latin, Runic\) but received Klingon/);
  expect(() => splitByGroups(src, ['Runic'])).toThrow(/1 held-out/);
  expect(() => splitByGroups(src, ['Greek', 'Latin'])).toThrow(/1 training/);
});

test('--val-groups parses a comma list (default: none, the seeded split)', () => {
  expect(configFromArgs(parse([]).values, 'train').valGroups).toEqual([]);
  expect(configFromArgs(parse(['--val-groups', 'Greek, Latin']).values, 'train').valGroups).toEqual(['Greek', 'Latin']);
});
