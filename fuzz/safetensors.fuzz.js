// Fuzz target (Jazzer.js, libFuzzer underneath): the safetensors header
// parser on arbitrary bytes taken as a whole file. Any outcome other than a
// parsed header or a CheckpointError is a finding, and so is a parsed header
// that breaks the parser's own guarantees.
const { parseHeader, CheckpointError } = require('../dist/io/safetensors.js');

module.exports.fuzz = function (data) {
  let h;
  try {
    h = parseHeader('fuzz.safetensors', data, data.length);
  } catch (err) {
    if (err instanceof CheckpointError) return;
    throw err;
  }
  // Accepted: the tensors tile the data section exactly, each within the file.
  const ranges = Object.values(h.tensors).sort((a, b) => a.begin - b.begin);
  let end = 0;
  for (const t of ranges) {
    if (t.begin !== end || t.end < t.begin) throw new Error(`accepted a bad layout: ${JSON.stringify(h.tensors)}`);
    end = t.end;
  }
  if (h.dataStart + end !== data.length) throw new Error('accepted a header that does not match the file size');
  for (const v of Object.values(h.metadata)) if (typeof v !== 'string') throw new Error('accepted non-string metadata');
};
