/**
 * The command line's help texts: the usage, and the --help of train, eval,
 * compare and bench (figures, embed, verify and identify: ./model-commands).
 */
import { DEFAULT_CONFIG, marginKindsHelp } from '../run/config';
import { COMPARE_LOSSES } from './compare';

const COMMANDS = `Commands:
  train     train the ResNet with a margin loss (default: the embedded MNIST digits)
  eval      verification (and Rank-1) of a trained run's checkpoint on held-out identities
  compare   one run per loss and seed, summarised in a Table-3 shaped comparison
  bench     the library's benchmark suite (needs a checkout of the margin-softmax repository)
  figures   the paper's Figures 1 and 2 (margin function; two-class boundaries) as SVG
  embed     L2-normalised embeddings of an ImageFolder into a safetensors gallery
  verify    cosine of two images; same identity above the run's threshold
  identify  the closest identities of images in a gallery written by embed

Run 'margin-softmax COMMAND --help' for the options of a command.
Options of every command: --help, -h; without a command: --version, -V.`;

export const USAGE = `margin-softmax — train and evaluate face-recognition models with fused margin softmax losses

Usage: margin-softmax COMMAND [options]

${COMMANDS}
`;

const DATA_HELP = `Data:
  --data DIR             ImageFolder root: one sub-folder of images (PGM, PNG, JPEG) per identity.
                         Without --data: the embedded MNIST default (digits as identities, 7/8/9 held out).
  --val-classes N        identities held out for verification (default: 25 % of them)
  --split-seed N         seed of the identity split (default 0)
  --val-groups A,B       hold out every identity under these top folders instead (Omniglot: whole alphabets)
  --size 32 | HxW        input size after resizing (default 32x32)
  --channels 1|3         greyscale or colour input (default 1)
  --on-bad-image stop|skip   an unreadable image stops the run (default) or is skipped with a warning
  --mnist-per-class N    embedded default: images per training digit (default 300)`;

const MODEL_HELP = `Model and loss:
  --dim N                embedding size (default 512)
  --widths 16,32,64      ResNet stage widths; --blocks N blocks per stage (default 1); --dropout P
  --margin KIND          the loss (default ${DEFAULT_CONFIG.margin.kind}), one of (with its parameters' defaults):
${marginKindsHelp('                           ')}
  --m, --m1, --m2, --m3, --sigma   the kind's parameters (the elastic kinds draw their margins with --seed)
  --scale S              logit scale (default 64)`;

const OPTIM_HELP = `Optimisation:
  --epochs N (10)  --batch-size N (32)  --lr X (0.1)  --lr-steps 6,9  --lr-factor 0.1
  --momentum 0.9  --weight-decay 5e-4  --head-lr-mult 1
  --flip 0.5             probability of a horizontal flip of a training image; --shift N: random ±N px translation
  --rotate D, --scale-jitter S, --shear D   random affine augmentation: rotation ±D°, scale 1 ± S, shear ±D°
  --contrast C, --brightness B, --lighting-ramp R   random photometric augmentation: contrast 1 ± C, brightness
                         ± B and a lighting ramp across the image ± R, as fractions of the intensity range
  --seed N               initialisation, shuffling and augmentation seed (default 0)
  --tf-backend wasm|cpu  tfjs backend (default wasm: the fastest that installs from npm alone)
  --backend auto|cpu|cuda   the margin head's backend (default auto: CUDA where a device is usable)
  --threads N            CPU threads of the margin head (default all)
  --workers N|auto       backbone replicas, each on a share of every batch (N − 1 worker threads); the head
                         steps on the whole batch and batch norm is synchronised over the replicas, so the
                         step is the one-model step (up to the order of fp32 sums). Default auto: 2 where
                         two CPUs or more are available (1.2× the images per second of one replica on a
                         quiet 2-core machine), 1 with --distributed mpi; --workers 1 when other work
                         keeps the cores busy
  --distributed mpi      run as one rank of \`mpirun -np K\`: the backbone data-parallel,
                         the head sharded over the ranks (needs the addon built with MPI)`;

const RUNS_HELP = `Runs:
  --out DIR              run folder: config.json, metrics.jsonl, theta.jsonl, eval.json, checkpoint/, plots/
  --resume               continue from DIR/checkpoint (same options)
  --overwrite            start afresh in a DIR that already holds a run
  --init-from RUN        start the backbone from RUN/checkpoint (another run, same --size, --channels,
                         --widths, --blocks, --dropout and --dim); the head starts afresh for this data
  --eval-every N         verification every N epochs (default 1; 0 = never)
  --eval-flip            test-time flip averaging of embeddings
  --eval-seed N          seed of the impostor pairs and the gallery choice (default 0)
  --no-plots             skip the SVG plots
  --quiet                no progress bar
  --json FILE|-          write the final result as JSON`;

export const HELP: Record<Command, string> = {
  train: `Usage: margin-softmax train [--data DIR] [--out runs/NAME] [options]

Trains the backbone with the fused margin head; prints the verification of the
last epoch (stdout) and writes the run folder.

${DATA_HELP}

${MODEL_HELP}

${OPTIM_HELP}

${RUNS_HELP}
`,
  eval: `Usage: margin-softmax eval --checkpoint runs/NAME [--data DIR] [options]

Evaluates a run's checkpoint: the LFW-style verification protocol and Rank-1 on
the identities it held out (or on every identity of --data with --all-identities).

  --checkpoint DIR       run folder (or its checkpoint/ folder) written by train; given
                         several times, their ensemble: the cosine of two images is the mean
                         of the models' cosines (runs with the same data, input shape and
                         held-out identities, e.g. one recipe with different --seed)
  --data DIR             ImageFolder to evaluate on (default: the run's own data)
  --all-identities       every identity of --data, not only the held-out ones
  --eval-flip            test-time flip averaging of embeddings
  --eval-seed N          seed of the impostor pairs and the gallery choice (default 0)
  --size, --dim, --channels   expected by the checkpoint (checked against it)
  --tf-backend wasm|cpu  tfjs backend (default wasm)
  --on-bad-image stop|skip
  --json FILE|-          write the result as JSON
  --n-way N              also N-way K-shot classification by nearest prototype on the same embeddings
  --k-shot K, --episodes E, --queries Q   with --n-way (defaults 1, 1000, 1)
`,
  compare: `Usage: margin-softmax compare [--data DIR]... [--losses LIST] [--seeds 0,1,2] [--out runs/compare] [options]

Trains one run per data set × loss × seed (a progress bar per run on stderr) and
prints the comparison tables once, at the end (stdout; also DIR/compare.md,
compare.json, compare.svg).

compare:
  --losses LIST          comma-separated kinds (default: ${COMPARE_LOSSES.map((m) => m.kind).join(',')},
                         with the paper's parameters); --seeds 0,1,2. An entry may set parameters, kind:name=value…
                         (arcface:m=0.4), and list alternatives with | for a sweep, every combination trained:
                         'adaptive:m1=0.01|0.03|0.05:m2=0.45|0.5|0.55' (the m1 = 0 baseline of each m2 is added)
                         prints the table m1 × m2 and the per-seed differences against m1 = 0
  --resume               reuse the runs in --out whose config.json matches (finished: read back; interrupted:
                         continued from the checkpoint); the others are trained afresh

${DATA_HELP.replace('Data:', 'Data (each --data is one column):')}

${MODEL_HELP}

${OPTIM_HELP}

${RUNS_HELP}
`,
  bench: `Usage: margin-softmax bench [--quick] [arguments of bench/run.mjs]

Runs the library's benchmark suite (bench/run.mjs of the margin-softmax
repository: the fused loss against the same loss in plain tfjs). The suite is
not part of the npm packages: run it from a checkout (git clone, npm ci, then
npm run bench or this command there).
`,
};

/** The commands that share the options of ./options (figures, embed, verify and identify parse their own: ./model-commands). */
export type Command = 'train' | 'eval' | 'compare' | 'bench';
export const COMMAND_NAMES: Command[] = ['train', 'eval', 'compare', 'bench'];
