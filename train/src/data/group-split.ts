/**
 * Holding out whole groups of identities: for Omniglot, whole alphabets
 * (an identity `Greek/character03` belongs to the group `Greek`), so the
 * held-out characters come from scripts the model never saw, as in Lake et
 * al.'s one-shot protocol, rather than from the alphabets it trained on.
 */
import { DataError, type DataSource, type Split } from './datasets';

/** The group of an identity: its path's first component. */
export function groupOf(identity: string): string {
  return identity.split('/')[0];
}

/** Holds out every identity of the named groups; the others train. */
export function splitByGroups(src: DataSource, groups: string[]): Split {
  const known = new Set(src.classes.map(groupOf));
  const unknown = groups.filter((g) => !known.has(g));
  if (unknown.length) throw new DataError(`Expected --val-groups among the groups of ${src.name} (${[...known].join(', ')}) but received ${unknown.join(', ')}`);
  const held = new Set(groups);
  const split = {
    trainClasses: src.classes.filter((c) => !held.has(groupOf(c))),
    valClasses: src.classes.filter((c) => held.has(groupOf(c))),
  };
  if (split.valClasses.length < 2 || split.trainClasses.length < 2) {
    throw new DataError(`Holding out ${groups.join(', ')} leaves ${split.trainClasses.length} training and ${split.valClasses.length} held-out identities: each needs at least 2`);
  }
  return split;
}
