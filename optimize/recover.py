"""Recovery fine-tune for variants that remove work (fewer channels, fewer pixels): distil the float parent.

A model that lost filters (optimize.channels) or now sees smaller images (`int8@160`) starts off its
parent's behaviour. A fixed 100-step fine-tune on labels decided the outcome by chance (issue 23:
the same `int8@160` recipe passed the gate with an F1 drop of 0.0056 on one training of the reference
model and failed with 0.0369 on another). This module makes the recovery a procedure, not a draw:

1. **BatchNorm re-estimation** (Li et al., "EagleEye", ECCV 2020: "adaptive BN"; Touvron et al.,
   "Fixing the train-test resolution discrepancy", NeurIPS 2019, for a new input size): the moving
   mean and variance of every BatchNorm are recomputed from training images passed through the
   *student* (a cumulative average over batches), because removing channels or pixels shifts every
   statistic downstream. Kept only when it lowers the validation distillation loss (step 4's measure).
2. **Distillation from the float parent** (Hinton et al., "Distilling the Knowledge in a Neural
   Network", 2015): loss = w * T^2 * KL(softmax(z_parent / T) || softmax(z_student / T)) +
   (1 - w) * cross-entropy(label, z_student), plus the model's own regularization losses. The parent
   sees *the same augmented view* as the student (Beyer et al., "Knowledge distillation: A good
   teacher is patient and consistent", CVPR 2022): the same flips, quarter turn and colour jitter,
   drawn once, applied to the image decoded at the parent's size and at the student's (both decoded
   by the device's own code, edge.preprocess, never resized by TensorFlow).
3. **A schedule**: Adam, linear warm-up over `warmup` of the steps, then cosine decay to 0.
4. **Early stopping on validation**: every `eval_every` steps the student is scored on the validation
   part by its mean KL(parent || student) at T = 1 - agreement with the parent, the thing the
   optimize gate measures, and a measure that uses no labels, so choosing the step does not tune
   to the validation labels the gate then reads. The best weights are kept; training stops after
   `patience` evaluations without improvement.

BatchNorm layers stay in inference mode (statistics frozen) during step 2, as in every other
fine-tune of the project (optimize/prune.py, optimize/qat.py).

Cost (2 CPU cores): one step does a student forward and backward pass and a parent forward pass on
`batch` images; for InceptionV3 at 224 px with batch 16 that is ~3-6 s, so the default 300 steps are
~15-30 min per variant, plus one validation pass per `eval_every` steps (early stopping may end sooner).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from leukedge.edge.errors import LeukedgeError
from leukedge.edge.preprocess import Preprocessing, normalize
from leukedge.tfcompat import tensorflow


class RecoveryError(LeukedgeError, ValueError):
    """Recovery cannot run: mismatched image sets, bad options; the message names the value."""


@dataclass(frozen=True)
class RecoveryOptions:
    """How long and how a recovery fine-tune runs (see the module docstring for each step).

    steps: most optimizer steps (early stopping may end sooner); 0 skips step 2 (BatchNorm step only).
    lr: peak learning rate (Adam), the project's fine-tune rate (train/config.py `lr` = 1e-4).
    warmup: share of the steps spent warming up linearly from 0 to lr.
    batch: images per step. temperature: T of the distillation term (2, a common choice for few classes).
    distill_weight: w, the weight of the distillation term against the label term.
    eval_every: steps between validation measurements; patience: measurements without improvement
    before stopping. recalibrate_images: training images used to re-estimate BatchNorm statistics
    (0 skips step 1). seed: shuffling, augmentation, dropout (tf.keras.utils.set_random_seed).
    """

    steps: int = 300
    lr: float = 1e-4
    warmup: float = 0.05
    batch: int = 16
    temperature: float = 2.0
    distill_weight: float = 0.8
    eval_every: int = 50
    patience: int = 3
    recalibrate_images: int = 512
    seed: int = 0

    def validate(self) -> "RecoveryOptions":
        """Raises RecoveryError naming the first option out of range; returns self."""
        checks = {"steps": self.steps >= 0, "lr": 0 < self.lr < 1, "warmup": 0 <= self.warmup < 1,
                  "batch": self.batch >= 1, "temperature": self.temperature > 0,
                  "distill_weight": 0 <= self.distill_weight <= 1, "eval_every": self.eval_every >= 1,
                  "patience": self.patience >= 1, "recalibrate_images": self.recalibrate_images >= 0}
        for name, ok in checks.items():
            if not ok:
                raise RecoveryError(f"recovery option {name}={getattr(self, name)!r} is out of range")
        return self


@dataclass
class Views:
    """The same images as the student and as the parent see them (decoded by edge.preprocess at each size).

    student: uint8 (N, S, S, 3) at the student's size; teacher: uint8 (N, T, T, 3) at the parent's
    size, or None when both sizes are the same (then the student's images are used); labels: (N,)
    class indices in the models' output order; preps: each side's preprocessing (size, mean, std).
    """

    student: np.ndarray
    teacher: np.ndarray | None
    labels: np.ndarray
    student_prep: Preprocessing
    teacher_prep: Preprocessing

    def __post_init__(self):
        n = len(self.student)
        if len(self.labels) != n or (self.teacher is not None and len(self.teacher) != n):
            raise RecoveryError(f"student images ({n}), parent images "
                                f"({None if self.teacher is None else len(self.teacher)}) and labels "
                                f"({len(self.labels)}) must be the same images")
        if n == 0:
            raise RecoveryError("no images to recover on")

    @property
    def teacher_images(self) -> np.ndarray:
        return self.student if self.teacher is None else self.teacher


def logit_function(model, output: str):
    """A function (x, training) -> logits for `model`, sharing its variables.

    A final softmax Dense is bypassed exactly (the Dense's kernel and bias applied to its input); a
    model whose card says it outputs logits is called as it is; any other probability output gives
    log(clip(P, 1e-7, 1)), logits up to a constant per image, which softmax ignores.
    output: the card's output kind, "probabilities" or "logits".
    """
    tf = tensorflow()
    last = model.layers[-1]
    if isinstance(last, tf.keras.layers.Dense) and last.get_config().get("activation") == "softmax":
        body = tf.keras.Model(model.inputs, last.input)

        def through_dense(x, training=False):
            z = tf.matmul(body(x, training=training), last.kernel)
            return z + last.bias if last.use_bias else z

        return through_dense
    if output == "logits":
        return lambda x, training=False: model(x, training=training)
    return lambda x, training=False: tf.math.log(tf.clip_by_value(model(x, training=training), 1e-7, 1.0))


def _batched_logits(fn, images: np.ndarray, prep: Preprocessing, batch: int = 32) -> np.ndarray:
    """float64 (N, classes) logits of uint8 images, normalized by edge.preprocess.normalize."""
    out = [np.asarray(fn(normalize(images[i:i + batch], prep), training=False), np.float64)
           for i in range(0, len(images), batch)]
    return np.concatenate(out)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def mean_kl(teacher_logits: np.ndarray, student_logits: np.ndarray) -> float:
    """Mean over images of KL(softmax(teacher) || softmax(student)) in nats, T = 1."""
    lt, ls = _log_softmax(teacher_logits), _log_softmax(student_logits)
    return float(np.mean(np.sum(np.exp(lt) * (lt - ls), axis=1)))


def recalibrate_batchnorm(model, images: np.ndarray, prep: Preprocessing, batch: int = 32) -> int:
    """Recompute every BatchNorm's moving mean and variance from `images` passed through `model`.

    The k-th batch (k = 0, 1, ...) is run in training mode with momentum k / (k + 1), which makes each
    moving statistic the plain average of the per-batch statistics (the first batch replaces the old
    value). Layers' trainable flags and momenta are restored afterwards. Dropout is active during the
    passes (training mode), as when the statistics were first learned.
    images: uint8 (N, S, S, 3) at the model's size. Returns the number of BatchNorm layers updated.
    """
    tf = tensorflow()
    bns = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    if not bns or len(images) == 0:
        return 0
    saved = [(layer.trainable, layer.momentum) for layer in bns]
    try:
        for layer in bns:
            layer.trainable = True  # a non-trainable BatchNorm runs in inference mode even when training=True
        for k, start in enumerate(range(0, len(images), batch)):
            for layer in bns:
                layer.momentum = k / (k + 1)
            model(tf.constant(normalize(images[start:start + batch], prep)), training=True)
    finally:
        for layer, (trainable, momentum) in zip(bns, saved):
            layer.trainable, layer.momentum = trainable, momentum
    return len(bns)


def _paired_dataset(train: Views, options: RecoveryOptions):
    """Endless tf.data of (student input, parent input, label) batches: the same augmentation on both views.

    The augmentation mirrors train.pipeline.augment_tf (flips, quarter turns, brightness +-10,
    contrast and saturation 0.9..1.1), with each random value drawn once per image (stateless,
    seeded by `options.seed` and the image's position in the stream) and applied to both views.
    """
    tf = tensorflow()
    from leukedge.train.pipeline import normalize_tf

    student, teacher = train.student, train.teacher
    s_shape, t_shape = student.shape[1:], (teacher.shape[1:] if teacher is not None else None)

    def take(i):
        i = int(i)
        t = teacher[i] if teacher is not None else np.zeros((1, 1, 3), np.uint8)
        return np.ascontiguousarray(student[i]), np.ascontiguousarray(t)

    def load(count, i, y):
        with tf.device("/device:CPU:0"):
            xs, xt = tf.numpy_function(take, [i], (tf.uint8, tf.uint8), stateful=False)
        xs.set_shape(s_shape)
        xt.set_shape(t_shape if t_shape is not None else (1, 1, 3))
        seed = tf.stack([tf.cast(options.seed, tf.int64), count])
        u = tf.random.stateless_uniform([6], seed=seed)
        k = tf.cast(tf.floor(u[2] * 4.0), tf.int32)
        delta, contrast, saturation = (u[3] * 2 - 1) * 10.0, 0.9 + u[4] * 0.2, 0.9 + u[5] * 0.2

        def augment(x):
            x = tf.cond(u[0] < 0.5, lambda: tf.image.flip_left_right(x), lambda: x)
            x = tf.cond(u[1] < 0.5, lambda: tf.image.flip_up_down(x), lambda: x)
            x = tf.image.rot90(x, k)
            x = tf.cast(x, tf.float32)
            x = tf.image.adjust_brightness(x, delta)
            x = tf.image.adjust_contrast(x, contrast)
            x = tf.image.adjust_saturation(x, saturation)
            return tf.clip_by_value(x, 0.0, 255.0)

        s = normalize_tf(augment(xs), train.student_prep)
        t = normalize_tf(augment(xt), train.teacher_prep) if teacher is not None else s
        return s, t, y

    n = len(student)
    ds = tf.data.Dataset.from_tensor_slices((np.arange(n, dtype=np.int64), np.asarray(train.labels, np.int64)))
    ds = ds.shuffle(n, seed=options.seed, reshuffle_each_iteration=True).repeat().enumerate()
    ds = ds.map(lambda c, iy: load(c, iy[0], iy[1]), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(options.batch).prefetch(tf.data.AUTOTUNE)


def recover(student, teacher, train: Views, validation: Views, options: RecoveryOptions | None = None,
            output: str = "probabilities", progress: bool = False):
    """Re-estimate BatchNorm, then distil `teacher` into `student` with early stopping (module docstring).

    student: the tf-keras model to recover, at train.student_prep.size; trained in place (its BatchNorm
      layers are set non-trainable) and left holding the best weights found. teacher: the float parent
      at train.teacher_prep.size (only run, never changed). train / validation: Views of the training
      and validation parts. output: both models' output kind ("probabilities" or "logits", the card's).
    Returns (student, report) with report = {"method", "options", "batchnorm": {"layers", "images",
    "kept", "kl_before", "kl_after"}, "history": [{"step", "kl", "agreement"}], "best_step", "best_kl",
    "steps_run", "stopped_early", "seconds"}: KL in nats (mean over validation images, T = 1),
    agreement = share of validation images whose top class equals the parent's.
    Raises RecoveryError for bad options or mismatched views.
    """
    tf = tensorflow()
    options = (options or RecoveryOptions()).validate()
    t0 = time.perf_counter()
    tf.keras.utils.set_random_seed(options.seed)
    run = _Recovery(student, teacher, logit_function(student, output), logit_function(teacher, output),
                    validation, options)
    bn_report = _reestimate_batchnorm(run, train)
    kl, agree = run.measure()
    run.history.append({"step": 0, "kl": round(kl, 6), "agreement": round(agree, 4)})
    run.best = (kl, 0, student.get_weights())
    if options.steps > 0:
        _distil(run, train, progress)
        student.set_weights(run.best[2])
    report = {"method": "BatchNorm re-estimation + distillation from the float parent (same augmented view), "
                        "cosine schedule, early stopping on validation KL to the parent",
              "options": asdict(options), "batchnorm": bn_report, "history": run.history, "best_step": run.best[1],
              "best_kl": round(run.best[0], 6), "steps_run": run.steps_run, "stopped_early": run.stopped,
              "train_images": int(len(train.student)), "validation_images": int(len(validation.student)),
              "seconds": round(time.perf_counter() - t0, 1)}
    return student, report


@dataclass
class _Recovery:
    """One recovery in progress (recover's state): the two models' logit functions, the parent's validation
    logits (computed once), and what the stages found: history, best (kl, step, weights), steps run."""

    student: object
    teacher: object
    student_fn: object
    teacher_fn: object
    validation: Views
    options: RecoveryOptions
    history: list = field(default_factory=list)
    best: tuple = (float("inf"), 0, None)
    steps_run: int = 0
    stopped: bool = False

    def __post_init__(self):
        v = self.validation
        self.z_parent = _batched_logits(self.teacher_fn, v.teacher_images, v.teacher_prep)
        self.parent_top = self.z_parent.argmax(axis=1)

    def measure(self) -> tuple[float, float]:
        """(mean KL(parent || student) in nats at T = 1, agreement of top classes) on the validation views."""
        z = _batched_logits(self.student_fn, self.validation.student, self.validation.student_prep)
        return mean_kl(self.z_parent, z), float(np.mean(z.argmax(axis=1) == self.parent_top))


def _reestimate_batchnorm(run: _Recovery, train: Views) -> dict:
    """Step 1: re-estimate BatchNorm on training images; kept only if the validation KL falls. Returns its report."""
    options, student = run.options, run.student
    kl_before, _ = run.measure()
    bn_report = {"layers": 0, "images": 0, "kept": False, "kl_before": round(kl_before, 6), "kl_after": None}
    if options.recalibrate_images:
        saved = student.get_weights()
        pick = np.random.default_rng(options.seed).permutation(len(train.student))[:options.recalibrate_images]
        bn_report["layers"] = recalibrate_batchnorm(student, train.student[np.sort(pick)], train.student_prep)
        bn_report["images"] = int(len(pick))
        kl_after, _ = run.measure()
        bn_report["kl_after"] = round(kl_after, 6)
        if kl_after < kl_before:
            bn_report["kept"] = True
        else:
            student.set_weights(saved)
    return bn_report


def _train_step(run: _Recovery):
    """Step 2's optimizer step, a tf.function (xs, xt, y) -> loss: distillation + label loss (module docstring),
    Adam on step 3's schedule. Sets the student's BatchNorm layers non-trainable (statistics stay as they are)."""
    tf = tensorflow()
    options, student = run.options, run.student
    for layer in student.layers:  # BatchNorm statistics stay as re-estimated (inference mode)
        layer.trainable = not isinstance(layer, tf.keras.layers.BatchNormalization)
    warm = int(options.steps * options.warmup)
    schedule = tf.keras.optimizers.schedules.CosineDecay(
        0.0 if warm else options.lr, max(1, options.steps - warm), alpha=0.0,
        warmup_target=options.lr if warm else None, warmup_steps=warm)
    optimizer = tf.keras.optimizers.Adam(schedule)
    variables = student.trainable_variables
    w, temp = float(options.distill_weight), float(options.temperature)
    student_fn, teacher_fn = run.student_fn, run.teacher_fn

    @tf.function
    def step(xs, xt, y):
        zt = tf.stop_gradient(teacher_fn(xt, training=False))
        with tf.GradientTape() as tape:
            zs = student_fn(xs, training=True)
            pt = tf.nn.softmax(zt / temp)
            kl_t = tf.reduce_sum(pt * (tf.nn.log_softmax(zt / temp) - tf.nn.log_softmax(zs / temp)), axis=1)
            ce = tf.keras.losses.sparse_categorical_crossentropy(y, zs, from_logits=True)
            loss = tf.reduce_mean(w * temp * temp * kl_t + (1.0 - w) * ce)
            if student.losses:
                loss += tf.add_n(student.losses)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def _distil(run: _Recovery, train: Views, progress: bool) -> None:
    """Steps 2-4: distil with the schedule, measuring every eval_every steps; records history, best and
    steps run in `run` and stops after `patience` measurements without improvement."""
    options = run.options
    step = _train_step(run)
    since_best = 0
    data = iter(_paired_dataset(train, options))
    for i in range(1, options.steps + 1):
        xs, xt, y = next(data)
        loss = step(xs, xt, y)
        run.steps_run = i
        if progress and i % 10 == 0:
            print(f"leukedge optimize: recovery step {i}/{options.steps}, loss {float(loss):.4f}",
                  file=sys.stderr, flush=True)
        if i % options.eval_every == 0 or i == options.steps:
            kl, agree = run.measure()
            run.history.append({"step": i, "kl": round(kl, 6), "agreement": round(agree, 4)})
            if kl < run.best[0]:
                run.best, since_best = (kl, i, run.student.get_weights()), 0
            else:
                since_best += 1
                if since_best >= options.patience:
                    run.stopped = i < options.steps
                    break


# -- the optimize step's side ---------------------------------------------------------------------------

def _part_arrays(ctx, part: str, size: int | None) -> np.ndarray:
    """uint8 images of a split part at `size` (None: the parent's), decoded once per (part, size) in ctx.cache."""
    from leukedge.evaluation import decode_samples

    key = ("recover-arrays", part, size or ctx.card.preprocessing.size)
    if key not in ctx.cache:
        arrays = decode_samples(ctx.split.parts[part], ctx.prep(size), what=f"{part} images (recovery)")
        ctx.cache[key] = arrays.in_label_order(ctx.ds_labels, ctx.card.labels)
    return ctx.cache[key]


def views_for(ctx, part: str, size: int) -> Views:
    """Views of a split part for a student at `size` px and the parent at its own size (ctx: optimize.builders.BuildContext)."""
    parent_size = ctx.card.preprocessing.size
    s = _part_arrays(ctx, part, size)
    t = _part_arrays(ctx, part, None) if size != parent_size else None
    if t is not None and list(t.paths) != list(s.paths):
        raise RecoveryError(f"the {part} images decoded at {size} and {parent_size} px differ "
                            "(a file readable at one size only?)")
    return Views(s.images, None if t is None else t.images, np.asarray(s.labels), ctx.prep(size), ctx.prep(None))


def recover_in_context(ctx, student, size: int, steps: int, lr: float):
    """Recover `student` (at `size` px) towards the optimize step's float parent on its run's split.

    ctx: optimize.builders.BuildContext (parent, card, split, options: finetune_batch and seed are used).
    steps, lr: RecoveryOptions.steps / lr. Returns (student, report) as recover() does.
    """
    opts = RecoveryOptions(steps=int(steps), lr=float(lr), batch=int(ctx.opts.finetune_batch), seed=int(ctx.opts.seed),
                           eval_every=max(1, min(RecoveryOptions.eval_every, int(steps) or 1)))
    return recover(student, ctx.model, views_for(ctx, "train", size), views_for(ctx, "validation", size), opts,
                   output=ctx.card.output, progress=sys.stderr.isatty())
