// Fuzz target (Jazzer.js, libFuzzer underneath): the training app's image
// decoder (PNM, PNG through pngjs, JPEG through jpeg-js, with the header and
// truncation checks in front) on arbitrary bytes. A decoded image must be
// consistent and within the pixel cap; a rejected one must be an ImageError.
// Hangs and memory blow-ups are caught by libFuzzer's -timeout and -rss_limit_mb.
const { decodeImage, ImageError } = require('../train/dist/data/images.js');

const MAX_PIXELS = 1 << 20; // small, so a claimed size past it must be refused from the header

module.exports.fuzz = function (data) {
  let img;
  try {
    img = decodeImage(data, 'fuzz.img', { maxPixels: MAX_PIXELS });
  } catch (err) {
    if (err instanceof ImageError) return;
    throw err;
  }
  const { width, height, channels } = img;
  if (!(width > 0 && height > 0 && width * height <= MAX_PIXELS)) throw new Error(`decoded a ${width}×${height} image past the cap`);
  if (channels !== 1 && channels !== 3) throw new Error(`decoded ${channels} channels`);
  if (img.data.length !== width * height * channels) throw new Error('pixel data does not match the size');
};
